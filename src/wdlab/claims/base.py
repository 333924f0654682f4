"""What a claim is: a paper's statement, the sweeps that test it, and the analysis that turns
their stored runs into tests and a verdict.

    Claim.arms(quick) --> Arm per sweep --spec()--> wdlab.sweep.run_sweep --> the store
    the store --ClaimData--> Claim.analyse(data) --> Evidence (tests, verdict, table, plots)

A claim never trains by itself: the sweep machinery runs its arms (resumable, parallel, Ray),
and the analysis reads the store alone, so `wdlab claims report` can rebuild every verdict
from a store that another machine filled. `quick=True` is the CI-sized budget: the same arms
with a few steps and a smaller grid, which checks the machinery, not the verdict.

Import stays torch-free (the CLI lists claims without loading torch).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from wdlab.claims import stats
from wdlab.errors import WdlabError

# Claim statuses besides the three verdicts.
NOT_RUN = "not run yet"
INCOMPLETE = "incomplete"
NEEDS = "needs"

ENDED = ("finished", "diverged", "failed")


@dataclass(frozen=True)
class Feature:
    """Something a claim needs that may not be in this wdlab yet, with a check for it."""

    what: str  # "decay=\"corrected\" (the toolbox issue)"
    available: Callable[[], bool]


def config_accepts(workload: str, *assignments: str) -> Callable[[], bool]:
    """A Feature check: whether a run config with these --set assignments validates."""

    def check() -> bool:
        from wdlab.config import build_config

        try:
            build_config(workload, assignments=list(assignments), tiny=True)
        except WdlabError:
            return False
        return True

    return check


@dataclass(frozen=True)
class Arm:
    """One sweep of a claim: a workload, fixed settings, grid axes and seeds."""

    key: str
    workload: str
    settings: tuple[str, ...] = ()
    axes: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    seeds: int = 3
    tiny: bool = False  # start from the workload's tiny recipe (quick budgets)

    def size(self) -> int:
        n = self.seeds
        for values in self.axes.values():
            n *= len(values)
        return n

    def steps(self) -> int | None:
        for item in self.settings:
            key, _, value = item.partition("=")
            if key.strip() == "steps":
                return int(value)
        return None


@dataclass
class Trial:
    """One trial of an arm, joined with its run's stored result."""

    params: dict[str, Any]
    seed: int
    status: str
    run_id: str | None
    final: dict[str, float]
    error: str | None = None

    def point(self, *keys: str) -> tuple[Any, ...]:
        return tuple(self.params.get(k) for k in keys)


class ClaimData:
    """A claim's stored trials by arm; monitor series are read from the store on demand."""

    def __init__(self, store: Any, trials: Mapping[str, list[Trial]]) -> None:
        self.store, self.trials = store, dict(trials)
        self._series: dict[tuple[str, str], list[tuple[int, float]]] = {}

    def arm(self, key: str) -> list[Trial]:
        return self.trials.get(key, [])

    def series(self, trial: Trial, name: str) -> list[tuple[int, float]]:
        """The stored (step, value) series `name` of a trial's run ([] when absent)."""
        if trial.run_id is None:
            return []
        key = (trial.run_id, name)
        if key not in self._series:
            self._series[key] = self.store.metrics(trial.run_id, [name]).get(name, [])
        return self._series[key]

    def names(self, trial: Trial, prefix: str) -> list[str]:
        if trial.run_id is None:
            return []
        return [n for n in self.store.metric_names(trial.run_id) if n.startswith(prefix)]

    def by_seed(
        self,
        key: str,
        value: Callable[[Trial], float],
        where: Mapping[str, Any] | None = None,
        *,
        diverged: bool = False,
    ) -> dict[int, float]:
        """{seed: value(trial)} over the arm's trials whose params match `where` ({dotted
        key: value}); a failed trial gives NaN, a diverged one too unless `diverged` (then
        `value` reads what the run logged before it diverged)."""
        ok = ("finished", "diverged") if diverged else ("finished",)
        out = {}
        for t in self.arm(key):
            if all(t.params.get(k) == v for k, v in (where or {}).items()):
                out[t.seed] = value(t) if t.status in ok else math.nan
        return out

    def grid(
        self,
        key: str,
        axis: str,
        value: Callable[[Trial], float],
        where: Mapping[str, Any] | None = None,
    ) -> dict[int, dict[Any, float]]:
        """{seed: {axis value: value(trial)}}; NaN for trials that did not finish."""
        out: dict[int, dict[Any, float]] = defaultdict(dict)
        for t in self.arm(key):
            if all(t.params.get(k) == v for k, v in (where or {}).items()):
                out[t.seed][t.params[axis]] = value(t) if t.status == "finished" else math.nan
        return dict(out)


def final(metric: str) -> Callable[[Trial], float]:
    """The trial's final evaluated `metric` (NaN when missing)."""
    return lambda t: float(t.final.get(metric, math.nan))


def paired_values(
    a: Mapping[int, float], b: Mapping[int, float]
) -> tuple[list[float], list[float]]:
    """Values of the seeds both sides have, in seed order."""
    seeds = sorted(set(a) & set(b))
    return [a[s] for s in seeds], [b[s] for s in seeds]


@dataclass
class Evidence:
    """What an analysis found: Holm-corrected tests, the verdict, a per-seed table, notes and
    plots (each a function drawing PNGs into a directory, returning their paths)."""

    tests: list[stats.TestResult]
    verdict: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[Callable[[Path], list[Path]]] = field(default_factory=list)

    @classmethod
    def from_tests(cls, tests: Sequence[stats.TestResult], **kw: Any) -> Evidence:
        corrected = stats.correct(tests)
        return cls(corrected, stats.verdict(corrected), **kw)

    def p_value(self) -> float:
        """The claim's p-value: the largest Holm-adjusted p (all must pass to reproduce)."""
        ps = [t.p_adjusted for t in self.tests]
        return max(ps) if ps and not any(math.isnan(p) for p in ps) else math.nan


class Claim:
    """One claim. Subclasses set the text attributes and implement `arms` and `analyse`."""

    name: ClassVar[str]
    title: ClassVar[str]
    source: ClassVar[str]
    statement: ClassVar[str]
    statistic: ClassVar[str]
    test: ClassVar[str]
    needs: ClassVar[tuple[Feature, ...]] = ()

    def arms(self, quick: bool = False) -> list[Arm]:
        raise NotImplementedError

    def analyse(self, data: ClaimData) -> Evidence:
        raise NotImplementedError

    def missing(self) -> list[str]:
        """The features this claim needs that this wdlab lacks."""
        return [f.what for f in self.needs if not f.available()]

    def budget(self, quick: bool = False) -> str:
        """Trials and steps, in words: what `claims run` will train."""
        arms = self.arms(quick)
        trials = sum(a.size() for a in arms)
        steps = sum(a.size() * (a.steps() or 0) for a in arms)
        seeds = sorted({a.seeds for a in arms})
        workloads = ", ".join(dict.fromkeys(a.workload for a in arms))
        return (
            f"{workloads}: {trials} trials in {len(arms)} sweep{'s' if len(arms) > 1 else ''} "
            f"({'/'.join(map(str, seeds))} seeds), {steps:,} training steps in all"
        )

    def setup(self, quick: bool = False) -> list[tuple[str, str]]:
        """(arm, description) rows: workload, fixed settings, grid, seeds."""
        out = []
        for arm in self.arms(quick):
            grid = "; ".join(f"{k} ∈ {{{', '.join(map(str, v))}}}" for k, v in arm.axes.items())
            text = f"{arm.workload}; {' '.join(arm.settings)}"
            if grid:
                text += f"; grid {grid}"
            out.append((arm.key, f"{text}; seeds 0..{arm.seeds - 1}"))
        return out


def mean(values: Iterable[float]) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return statistics.fmean(vals) if vals else math.nan


def last(series: Sequence[tuple[int, float]]) -> float:
    return float(series[-1][1]) if series else math.nan


def tail(series: Sequence[tuple[int, float]], fraction: float) -> list[float]:
    """Values of the last `fraction` of a series' steps."""
    if not series:
        return []
    end = series[-1][0]
    start = end - fraction * (end - series[0][0])
    return [v for s, v in series if s >= start]
