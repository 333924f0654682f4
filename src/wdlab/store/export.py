"""Exporters: a run's metrics as CSV or TensorBoard scalars."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wdlab.atomic import atomic_open
from wdlab.errors import WdlabError


class ExportMixin:
    """Mixed into Store; only `export_tensorboard` imports torch, lazily."""

    if TYPE_CHECKING:

        def metrics(self, run_id: str, names: Any = None) -> dict[str, list[tuple[int, float]]]: ...
        def get_run(self, ref: str) -> Any: ...

    def export_csv(self, run_id: str, path: str | os.PathLike[str]) -> Path:
        """Write a run's metrics as long-format CSV (step,name,value), sorted by step then
        name. Written to a temporary file and renamed, so `path` is never half-written."""
        series = self.metrics(run_id)
        rows = sorted((step, name, value) for name, pts in series.items() for step, value in pts)
        target = Path(path)
        with atomic_open(target, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "name", "value"])
            for step, name, value in rows:
                writer.writerow([step, name, repr(float(value))])  # repr: exact round trip
        return target

    def export_tensorboard(self, run_id: str, logdir: str | os.PathLike[str]) -> Path:
        """Write a run's metrics as TensorBoard scalars (tag = metric name) into `logdir`
        (which must not hold events yet), plus its config as text. Needs tensorboard."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise WdlabError(
                "exporting to TensorBoard needs the tensorboard package: "
                "pip install 'tensorboard>=2.14'",
                field="tensorboard",
            ) from exc
        record = self.get_run(run_id)
        series = self.metrics(record.id)
        out = Path(logdir)
        if out.is_dir() and any(p.name.startswith("events.out.tfevents") for p in out.iterdir()):
            # A second export would add a second event file and TensorBoard would show every
            # point twice.
            raise WdlabError(
                f"logdir {out} already holds TensorBoard events; pass an empty directory, "
                f"e.g. {out / record.name}",
                field="logdir",
            )
        writer = SummaryWriter(log_dir=os.fspath(out))
        try:
            for name, pts in series.items():
                for step, value in pts:
                    writer.add_scalar(name, value, global_step=step)
            config = json.dumps(record.config, indent=2, sort_keys=True)
            writer.add_text(
                "config",
                f"run {record.id} ({record.name})\n\n    " + config.replace("\n", "\n    "),
                global_step=0,
            )
        finally:
            writer.close()
        return out
