"""Progress displays for long work: a rich bar on a terminal, plain lines elsewhere (logs, CI).

Labels hold stored strings (a sweep's name), so they are shown as plain text: never read as
rich markup, control characters made visible (wdlab._text.clean).
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from wdlab._text import clean


def _format_fields(fields: dict[str, float | None]) -> str:
    return " ".join(f"{key} {value:.4g}" for key, value in fields.items() if value is not None)


class PlainProgress:
    """One line about every 5% of the run and at every evaluation, for non-terminals."""

    def __init__(self, label: str, stream: TextIO | None = None, unit: str = "step") -> None:
        self.label = clean(label)
        self.unit = unit
        self.stream = stream or sys.stdout
        self.total = 0
        self.every = 1
        self.start_time = 0.0
        self.initial = 0

    def start(self, total: int, initial: int) -> None:
        self.total, self.initial = total, initial
        self.every = max(total // 20, 1)
        self.start_time = time.perf_counter()

    def update(self, step: int, fields: dict[str, float]) -> None:
        is_eval = any(key.startswith("val_") for key in fields)
        if step % self.every and not is_eval and step != self.total:
            return
        elapsed = time.perf_counter() - self.start_time
        rate = (step - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        print(
            f"{self.label} {self.unit} {step}/{self.total} {_format_fields(fields)} "
            + (f"eta {eta:.0f}s" if math.isfinite(eta) else ""),
            file=self.stream,
            flush=True,
        )

    def stop(self) -> None:
        pass


class RichProgress:
    """A live bar with step, loss, the latest metrics and the ETA."""

    def __init__(self, label: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.label = clean(label)
        self.bar = Progress(
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}", markup=False),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            transient=False,
        )
        self.task: int | None = None
        self.latest: dict[str, float] = {}

    def start(self, total: int, initial: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=total, completed=initial, info="")

    def update(self, step: int, fields: dict[str, float | None]) -> None:
        for key, value in fields.items():  # None removes a field (a sweep trial that ended)
            if value is None:
                self.latest.pop(key, None)
            else:
                self.latest[key] = value
        assert self.task is not None
        self.bar.update(self.task, completed=step, info=_format_fields(self.latest))

    def stop(self) -> None:
        self.bar.stop()


def make_progress(
    label: str, enabled: bool = True, unit: str = "step"
) -> PlainProgress | RichProgress | None:
    """A rich bar when stdout is a terminal, plain lines otherwise, None when disabled."""
    if not enabled:
        return None
    return RichProgress(label) if sys.stdout.isatty() else PlainProgress(label, unit=unit)
