"""Running a claim's sweeps and judging it from the store.

    run_claim: every arm -> SweepSpec -> wdlab.sweep.run_sweep (resumable: the same command
               continues where it stopped; workers and Ray as `wdlab sweep` has them)
    judge:     the store -> ClaimData -> claim.analyse -> Outcome (status, evidence, counts)

Sweep names are `claim-<claim>-<arm>[-quick]-<hash>`, the hash over the arm's spec: a claim
whose definition changed gets new sweeps instead of a clash with the old ones' names.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wdlab.claims.base import (
    ENDED,
    INCOMPLETE,
    NEEDS,
    NOT_RUN,
    Arm,
    Claim,
    ClaimData,
    Evidence,
    Trial,
)
from wdlab.errors import WdlabError


def arm_spec(claim: Claim, arm: Arm, quick: bool) -> Any:
    """The SweepSpec of one arm, named after the claim, the arm and the spec's hash."""
    from wdlab.sweep import SweepSpec

    values = {
        "workload": arm.workload,
        "axes": {k: list(v) for k, v in arm.axes.items()},
        "seeds": arm.seeds,
        "assignments": list(arm.settings),
        "tiny": arm.tiny,
    }
    ident = SweepSpec.create(**values).identity()
    name = f"claim-{claim.name}-{arm.key}{'-quick' if quick else ''}-{ident[:8]}"
    return SweepSpec.create(**values, name=name)


def needs_message(claim: Claim, missing: list[str]) -> str:
    return (
        f"claim {claim.name} needs {'; '.join(missing)}, which this wdlab does not have yet; "
        "it runs once that lands (see `wdlab claims list`)"
    )


def run_claim(
    claim: Claim,
    store_path: Path,
    *,
    quick: bool = False,
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    progress: bool = True,
) -> None:
    """Train (or resume) every arm of `claim` into the store at `store_path`.

    A claim whose features are missing raises WdlabError in one line before anything runs.
    """
    from wdlab.sweep import run_sweep, validated_trials

    missing = claim.missing()
    if missing:
        raise WdlabError(needs_message(claim, missing), field="claim")
    specs = [arm_spec(claim, arm, quick) for arm in claim.arms(quick)]
    for spec in specs:  # every arm is validated before the first one trains
        validated_trials(spec)
    for spec in specs:
        run_sweep(
            spec, store_path, workers=workers, backend=backend, address=address,
            progress=progress,
        )  # fmt: skip


@dataclass
class Outcome:
    """A claim's state in a store: `status` is a verdict, NOT_RUN, INCOMPLETE or NEEDS;
    `evidence` is there once every arm's trials have ended."""

    claim: Claim
    quick: bool
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    evidence: Evidence | None = None
    sweeps: list[str] = field(default_factory=list)
    detail: str = ""

    def p_value(self) -> float:
        return self.evidence.p_value() if self.evidence is not None else math.nan

    def line(self) -> str:
        """One line for the terminal."""
        budget = " (quick budget: checks the machinery, not the verdict)" if self.quick else ""
        if self.evidence is None:
            return f"{self.claim.name}: {self.status}{': ' + self.detail if self.detail else ''}"
        p = self.p_value()
        p_text = "p=nan" if math.isnan(p) else f"p={p:.3g}"
        return f"{self.claim.name}: {self.status} ({p_text}, Holm over " \
               f"{len(self.evidence.tests)} test{'s' if len(self.evidence.tests) > 1 else ''})" \
               f"{budget}"  # fmt: skip


def judge(claim: Claim, store: Any, *, quick: bool = False) -> Outcome:
    """The claim's outcome from the store alone (nothing trains)."""
    missing = claim.missing()
    if missing:
        return Outcome(claim, quick, NEEDS, detail="; ".join(missing))
    trials: dict[str, list[Trial]] = {}
    counts: Counter[str] = Counter()
    names, found = [], 0
    for arm in claim.arms(quick):
        spec = arm_spec(claim, arm, quick)
        names.append(spec.name)
        try:
            sweep = store.get_sweep(spec.name)
        except WdlabError:
            counts["pending"] += arm.size()
            continue
        found += 1
        rows = []
        for t in store.trials(sweep.id):
            counts[t.status] += 1
            final: dict[str, float] = {}
            if t.run_id is not None:
                try:
                    result = store.get_run(t.run_id).result or {}
                except WdlabError:
                    result = {}
                final = {k: float(v) for k, v in (result.get("final_metrics") or {}).items()
                         if isinstance(v, (int, float))}  # fmt: skip
            params = {k: v for k, v in t.params.items() if k != "seed"}
            rows.append(Trial(params, int(t.params.get("seed", 0)), t.status, t.run_id, final,
                              t.error))  # fmt: skip
        trials[arm.key] = rows
    outcome = Outcome(claim, quick, NOT_RUN, dict(counts), sweeps=names)
    if not found:
        return outcome
    ended = sum(counts[s] for s in ENDED)
    total = sum(counts.values())
    if ended < total:
        outcome.status = INCOMPLETE
        outcome.detail = f"{ended} of {total} trials ended; `wdlab claims run {claim.name}"
        outcome.detail += " --quick` continues it" if quick else "` continues it"
        return outcome
    outcome.evidence = claim.analyse(ClaimData(store, trials))
    outcome.status = outcome.evidence.verdict
    return outcome
