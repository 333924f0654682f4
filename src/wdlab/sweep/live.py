"""What the sweep's progress shows inside trials that are still training: the last step
each running trial's run has logged (rows reach the store every few seconds)."""

from __future__ import annotations

from typing import Any


def running_steps(store: Any, sweep_id: str) -> dict[int, int]:
    """{trial index: last logged step} of the sweep's running trials that have a run."""
    out: dict[int, int] = {}
    for trial in store.trials(sweep_id, status="running"):
        if trial.run_id is None:
            continue
        rows = store._read(
            "SELECT MAX(step) AS step FROM metrics WHERE run_id = ? AND name = 'train_loss'",
            (trial.run_id,),
        )
        if rows and rows[0]["step"] is not None:
            out[trial.trial_index] = int(rows[0]["step"])
    return out


def step_fields(live: dict[int, int], previous: dict[int, int]) -> dict[str, float | None]:
    """Progress fields for the running trials' steps; None removes a trial that ended."""
    fields: dict[str, float | None] = {f"trial {i} step": None for i in previous if i not in live}
    fields.update({f"trial {i} step": float(step) for i, step in sorted(live.items())})
    return fields
