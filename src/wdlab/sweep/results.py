"""A sweep's outcome: one row per trial with its run's result, read from the store alone."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from wdlab.errors import WdlabError
from wdlab.store import Store


@dataclass
class TrialResult:
    """One trial as a table row."""

    index: int
    params: dict[str, Any]
    status: str
    metric: str | None = None
    final: float | None = None
    reached: bool | None = None
    steps_to_target: int | None = None
    seconds_to_target: float | None = None
    run_id: str | None = None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        return {
            "trial": self.index,
            **self.params,
            "status": self.status,
            self.metric or "metric": self.final,
            "reached": self.reached,
            "steps_to_target": self.steps_to_target,
            "seconds_to_target": self.seconds_to_target,
            "run": self.run_id,
            "error": self.error,
        }


@dataclass
class SweepSummary:
    sweep_id: str
    name: str
    counts: dict[str, int]
    wall_seconds: float
    trials: list[TrialResult] = field(default_factory=list)
    created: bool = False  # False: an existing sweep was resumed

    def rows(self) -> list[dict[str, Any]]:
        return [t.row() for t in self.trials]


def counts(store: Store, sweep_id: str) -> dict[str, int]:
    """Trials per status, every status present."""
    seen = Counter(t.status for t in store.trials(sweep_id))
    return {s: seen.get(s, 0) for s in ("pending", "running", "finished", "diverged", "failed")}


def summarize(store: Store, sweep_id: str, wall_seconds: float = 0.0) -> SweepSummary:
    """A sweep's trials with their runs' results, from the store alone."""
    from wdlab import workloads

    record = store.get_sweep(sweep_id)
    metric = workloads.get(record.spec["spec"]["workload"]).metric  # failed trials too
    results = []
    for trial in store.trials(sweep_id):
        row = TrialResult(
            trial.trial_index,
            trial.params,
            trial.status,
            metric=metric,
            run_id=trial.run_id,
            error=trial.error,
        )
        if trial.run_id is not None:
            try:
                summary = store.get_run(trial.run_id).result or {}
            except WdlabError:
                summary = {}
            row.final = summary.get("final_metrics", {}).get(metric)
            row.reached = summary.get("reached")
            row.steps_to_target = summary.get("steps_to_target")
            row.seconds_to_target = summary.get("seconds_to_target")
        results.append(row)
    return SweepSummary(sweep_id, record.name, counts(store, sweep_id), wall_seconds, results)
