"""Weights & Biases: offline by default (WANDB_MODE or log.wandb_mode say otherwise).

One W&B run per process under <dir>/wandb/, with the wdlab run id as its id and the
config as its config; `wandb sync <dir>/wandb/offline-run-*` uploads it later. A resumed
run asks for the same W&B run (resume="allow" with the stored id), which continues it online;
offline, wandb (0.31) ignores resume and every init opens a new offline-run-<time>-<id>
folder, so a resumed run writes a second offline run with the same id, starting after the
checkpoint's step: `wandb sync --id <id> <dir>/wandb/offline-run-*` uploads both as one run,
in order of start time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class WandbLogger:
    def __init__(self, project: str, directory: Path, mode: str, target: Any) -> None:
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._run = wandb.init(
            project=project, id=target.run_id, name=target.name or target.run_id,
            dir=str(directory), mode=mode, config=target.config,
            resume="allow" if target.start_after is not None else None,
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._run.log({k: float(v) for k, v in metrics.items()}, step=step)

    def flush(self) -> None:
        pass  # the W&B process writes continuously

    def close(self, status: str) -> None:
        self._run.finish(exit_code=1 if status in ("diverged", "failed") else 0)
