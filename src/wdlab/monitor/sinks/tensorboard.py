"""TensorBoard: one event folder per run, written live; a resumed run appends to it.

On resume the new writer starts with a purge marker at the first step after the checkpoint
(SummaryWriter's purge_step), so TensorBoard drops what a killed process wrote past the
checkpoint and the steps logged again appear once: one stream, no duplicated steps.

Also a Monitor sink on its own: `Monitor(model, opt, sink=TensorBoardLogger("tb"))`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


class TensorBoardLogger:
    def __init__(self, log_dir: str | Path, start_after: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        purge = None if start_after is None else max(start_after + 1, 0)
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge, flush_secs=10)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, float(value), global_step=step)

    __call__ = log  # a Monitor sink: sink(step, metrics)

    def flush(self) -> None:
        self._writer.flush()

    def close(self, status: str) -> None:
        self._writer.close()
