"""Scores the lab reports: LR sensitivity, time to target, AlgoPerf profiles, significance.

Pure functions over plain Python/numpy values (no store, no training), so sweeps, reports
and benchmarks share one definition of every number they print. Formulas and sources:
REFERENCE.md §5 (LR sensitivity) and §8 (AlgoPerf); docs/scoring.md has worked examples.

Conventions: a time to target is a float > 0, math.inf for a miss; lower losses and times
are better unless a function takes `higher_is_better`.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

DEFAULT_LR_RANGE = (3e-4, 3e-1)
# A log-spaced grid computed in floats can land an endpoint at 0.30000000000000004; such a
# point was meant to be in the range, so the bounds get this relative slack.
_LR_RANGE_RTOL = 1e-9
_ALTERNATIVES = ("less", "greater")


# --------------------------------------------------------------------------- helpers


def _float(name: str, value: Any) -> float:
    """float(value), or a ValueError naming the argument (bools are not numbers here)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def _floats(name: str, values: Sequence[Any]) -> list[float]:
    return [_float(f"{name}[{i}]", v) for i, v in enumerate(values)]


def _time(name: str, value: Any) -> float:
    """A time to target: >= 0, math.inf for a miss; NaN is a bug upstream, not a miss."""
    t = _float(name, value)
    if math.isnan(t) or t < 0:
        raise ValueError(f"{name} must be a time >= 0 (math.inf for a miss), got {value!r}")
    return t


def _check_r_max(r_max: Any) -> float:
    r = _float("r_max", r_max)
    if not (math.isfinite(r) and r > 1.0):
        raise ValueError(f"r_max must be a finite number > 1 (AlgoPerf uses 4.0), got {r_max!r}")
    return r


def _check_alpha(alpha: Any) -> float:
    a = _float("alpha", alpha)
    if not 0.0 < a < 1.0:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.05, got {alpha!r}")
    return a


# --------------------------------------------------------------------------- LR sensitivity


def lr_sensitivity(
    lrs: Sequence[float],
    losses: Sequence[float],
    init_loss: float,
    lr_range: tuple[float, float] = DEFAULT_LR_RANGE,
) -> float:
    """Wortsman et al.'s LR sensitivity: mean over swept η in lr_range of min(ℓ(η), ℓ0) − ℓ*.

    Lower is better: 0 means every learning rate in the range did as well as the best one.
    Only points inside lr_range (inclusive) count, for the mean and for ℓ* alike, so
    sensitivities from sweeps over different grids stay comparable. Diverged points
    (NaN or ±inf loss) count as ℓ0. Returns NaN when no point in range got below ℓ0: a
    sweep that never trained says nothing about sensitivity (0 would read as "robust").
    One loss per learning rate: aggregate seeds first (duplicates raise).
    """
    bounds = _floats("lr_range", lr_range)
    if len(bounds) != 2 or not (0.0 < bounds[0] < bounds[1] < math.inf):
        raise ValueError(f"lr_range must be (low, high) with 0 < low < high, got {lr_range!r}")
    lo, hi = bounds
    if len(lrs) != len(losses):
        raise ValueError(
            f"lrs and losses must have the same length (one loss per learning rate), "
            f"got {len(lrs)} and {len(losses)}"
        )
    l0 = _float("init_loss", init_loss)
    if not math.isfinite(l0):
        raise ValueError(f"init_loss must be the finite loss at initialization, got {init_loss!r}")
    etas = _floats("lrs", lrs)
    for i, eta in enumerate(etas):
        if not (math.isfinite(eta) and eta > 0):
            raise ValueError(f"lrs[{i}] must be a finite learning rate > 0, got {lrs[i]!r}")
    if len(set(etas)) != len(etas):
        dup = next(e for e in etas if etas.count(e) > 1)
        raise ValueError(
            f"lrs has learning rate {dup!r} more than once; pass one loss per learning rate "
            f"(e.g. the mean over seeds)"
        )
    values = _floats("losses", losses)
    lo_tol, hi_tol = lo * (1 - _LR_RANGE_RTOL), hi * (1 + _LR_RANGE_RTOL)
    capped = [
        min(loss, l0) if math.isfinite(loss) else l0
        for eta, loss in zip(etas, values, strict=True)
        if lo_tol <= eta <= hi_tol
    ]
    if not capped:
        swept = f"{min(etas):g}..{max(etas):g}" if etas else "nothing"
        raise ValueError(
            f"lr_range={lr_range!r} contains none of the swept learning rates ({swept}); "
            f"sweep inside lr_range or pass a wider lr_range"
        )
    best = min(capped)
    if best >= l0:
        return math.nan
    return math.fsum(c - best for c in capped) / len(capped)


# --------------------------------------------------------------------------- time to target


def time_to_target(
    curve: Sequence[tuple[float, float]], target: float, higher_is_better: bool
) -> float:
    """First time (or step) at which the metric meets the target (inclusive); inf if never.

    AlgoPerf scores a run by this number and a miss by ∞. NaN metric values never meet
    the target. The curve need not be sorted: the earliest qualifying time wins.
    """
    goal = _float("target", target)
    if math.isnan(goal):
        raise ValueError("target must be a number, got nan")
    first = math.inf
    for i, point in enumerate(curve):
        try:
            raw_t, raw_v = point
        except (TypeError, ValueError):
            raise ValueError(f"curve[{i}] must be a (time, value) pair, got {point!r}") from None
        t, v = _float(f"curve[{i}] time", raw_t), _float(f"curve[{i}] value", raw_v)
        if not math.isfinite(t):
            raise ValueError(f"curve[{i}] time must be finite, got {raw_t!r}")
        met = v >= goal if higher_is_better else v <= goal
        if met and t < first:
            first = t
    return first


def median_time_to_target(times_per_seed: Sequence[float]) -> float:
    """Median over seeds with misses as +∞ (the largest value).

    More than half misses gives ∞; with an even count the two middle values are averaged,
    so exactly half misses also gives ∞ (as numpy.median does).
    """
    times = [_time(f"times_per_seed[{i}]", t) for i, t in enumerate(times_per_seed)]
    if not times:
        raise ValueError("times_per_seed must hold at least one time (math.inf for a miss)")
    return float(statistics.median(times))


def external_tuning_time(study_trials: Sequence[Sequence[float]]) -> float:
    """AlgoPerf external tuning: the fastest trial of each study, then the median over studies."""
    if not study_trials:
        raise ValueError("study_trials must hold at least one study (a list of trial times)")
    best = []
    for s, trials in enumerate(study_trials):
        times = [_time(f"study_trials[{s}][{i}]", t) for i, t in enumerate(trials)]
        if not times:
            raise ValueError(f"study_trials[{s}] is empty; each study needs at least one trial")
        best.append(min(times))
    return median_time_to_target(best)


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class ProfileRatios:
    """r = t / t_best per submission and workload; inf marks a miss (including r > r_max)."""

    ratios: dict[str, dict[str, float]]
    workloads: list[str]  # the workloads the profile counts
    unsolved: list[str]  # left out: no submission reached the target
    r_max: float


def performance_ratios(
    times: Mapping[str, Mapping[str, float]], r_max: float = 4.0
) -> ProfileRatios:
    """The ratios a profile is built from, and the workloads left out because nobody solved them.

    Every submission must report every workload (math.inf for a miss), so a missing
    result cannot silently shrink a denominator.
    """
    rmax = _check_r_max(r_max)
    if not times:
        raise ValueError("times must map at least one submission to {workload: time}")
    names = list(times)
    workloads = list(times[names[0]])
    if not workloads:
        raise ValueError(f"times[{names[0]!r}] has no workloads; give {{workload: time}}")
    clean: dict[str, dict[str, float]] = {}
    for sub in names:
        row = times[sub]
        missing = [w for w in workloads if w not in row]
        extra = [w for w in row if w not in workloads]
        if missing or extra:
            raise ValueError(
                f"times[{sub!r}] must report the same workloads as times[{names[0]!r}] "
                f"(missing {missing}, extra {extra}); give math.inf for a miss"
            )
        clean[sub] = {}
        for w in workloads:
            t = _time(f"times[{sub!r}][{w!r}]", row[w])
            if t == 0:
                raise ValueError(
                    f"times[{sub!r}][{w!r}] must be > 0 (ratios divide by the best time), got 0"
                )
            clean[sub][w] = t
    best = {w: min(clean[s][w] for s in names) for w in workloads}
    kept = [w for w in workloads if math.isfinite(best[w])]
    unsolved = [w for w in workloads if not math.isfinite(best[w])]
    ratios: dict[str, dict[str, float]] = {}
    for sub in names:
        ratios[sub] = {}
        for w in kept:
            r = clean[sub][w] / best[w]
            ratios[sub][w] = r if r <= rmax else math.inf
    return ProfileRatios(ratios=ratios, workloads=kept, unsolved=unsolved, r_max=rmax)


def _rho(ratios: Mapping[str, float], n: int, tau: float) -> float:
    """Fraction of the n counted workloads with r <= tau (0 when nothing is counted)."""
    return sum(1 for r in ratios.values() if r <= tau) / n if n else 0.0


def _warn_unsolved(unsolved: list[str], caller: str) -> None:
    if unsolved:
        warnings.warn(
            f"{caller}: left out workloads no submission solved: {', '.join(unsolved)}",
            stacklevel=3,
        )


def performance_profile(
    times: Mapping[str, Mapping[str, float]],
    taus: Sequence[float] | None = None,
    r_max: float = 4.0,
) -> dict[str, list[tuple[float, float]]]:
    """ρ_s(τ) = fraction of workloads with r ≤ τ, as (τ, ρ) points per submission.

    With taus=None the points are the step function's knots: 1, every finite ratio, and
    r_max, shared by all submissions; ρ is right-continuous, so plotting them with
    drawstyle="steps-post" on [1, r_max] draws the profile exactly. Workloads nobody
    solved are left out and named in a warning (performance_ratios lists them too).
    """
    pr = performance_ratios(times, r_max)
    _warn_unsolved(pr.unsolved, "performance_profile")
    if taus is None:
        knots = {1.0, pr.r_max}
        for row in pr.ratios.values():
            knots.update(r for r in row.values() if math.isfinite(r))
        grid = sorted(knots)
    else:
        grid = _floats("taus", taus)
        for i, tau in enumerate(grid):
            if math.isnan(tau):
                raise ValueError(f"taus[{i}] must be a number, got nan")
    n = len(pr.workloads)
    return {sub: [(tau, _rho(row, n, tau)) for tau in grid] for sub, row in pr.ratios.items()}


def algoperf_score(
    times: Mapping[str, Mapping[str, float]], r_max: float = 4.0
) -> dict[str, float]:
    """B_s = (1/(r_max − 1))·∫₁^r_max ρ_s(τ) dτ, integrated exactly.

    ρ_s is a sum of steps, one per workload: (1/n)·[r_w ≤ τ]. Each step integrates over
    [1, r_max] to r_max − r_w when r_w ≤ r_max and to 0 for a miss, so
    B_s = Σ_w (r_max − r_w) / (n·(r_max − 1)): 1 for best everywhere, 0 for all misses.
    If no workload was solved by anyone every score is 0.
    """
    pr = performance_ratios(times, r_max)
    _warn_unsolved(pr.unsolved, "algoperf_score")
    n, rmax = len(pr.workloads), pr.r_max
    if n == 0:
        return {sub: 0.0 for sub in pr.ratios}
    return {
        sub: math.fsum(rmax - r for r in row.values() if math.isfinite(r)) / (n * (rmax - 1.0))
        for sub, row in pr.ratios.items()
    }


# --------------------------------------------------------------------------- significance


@dataclass(frozen=True)
class SignificanceResult:
    """One test's outcome; p_value is NaN when the test could not run (method says why)."""

    statistic: float
    p_value: float
    method: str
    n_a: int
    n_b: int  # 0 for a one-sample test

    def significant(self, alpha: float) -> bool:
        """p < alpha; a test that could not run (NaN) is never significant."""
        return self.p_value < _check_alpha(alpha)  # NaN < x is False


def _not_run(method: str, why: str, n_a: int, n_b: int) -> SignificanceResult:
    return SignificanceResult(math.nan, math.nan, f"{method}; not run: {why}", n_a, n_b)


def one_sided_test(
    a: Sequence[float], b: Sequence[float], alternative: str = "less"
) -> SignificanceResult:
    """Welch's t-test that mean(a) < mean(b) ("less") or > ("greater"); never raises on data.

    Welch, because configurations differ in their seed-to-seed spread. Fewer than two
    values on a side, or any NaN/inf (a diverged run, a missed target), gives p = NaN.
    """
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}")
    xa, xb = _floats("a", a), _floats("b", b)
    sign = "<" if alternative == "less" else ">"
    method = f"Welch's t-test, one-sided: mean(a) {sign} mean(b)"
    if len(xa) < 2 or len(xb) < 2:
        return _not_run(
            method, f"needs >= 2 values per side, got {len(xa)} and {len(xb)}", len(xa), len(xb)
        )
    if not all(math.isfinite(x) for x in xa + xb):
        return _not_run(method, "non-finite values (diverged runs or misses)", len(xa), len(xb))
    with warnings.catch_warnings():
        # scipy warns on (near-)identical samples; its result (±inf or nan) is still right.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(xa, xb, equal_var=False, alternative=alternative)
    return SignificanceResult(float(res.statistic), float(res.pvalue), method, len(xa), len(xb))


def beats(
    a: Sequence[float], b: Sequence[float], alpha: float = 0.05, *, higher_is_better: bool = False
) -> bool:
    """Whether a is significantly better than b (lower by default) at level alpha."""
    alternative = "greater" if higher_is_better else "less"
    return one_sided_test(a, b, alternative).significant(alpha)


def meets_target_test(
    values: Sequence[float], target: float, higher_is_better: bool
) -> SignificanceResult:
    """modded-nanogpt's record rule: one-sided one-sample t-test that the mean meets target.

    H1 is mean < target for a loss (mean > target when higher is better); a record
    needs p < 0.01. Fewer than two values or any NaN/inf gives p = NaN.
    """
    goal = _float("target", target)
    if not math.isfinite(goal):
        raise ValueError(f"target must be a finite number, got {target!r}")
    xs = _floats("values", values)
    sign = ">" if higher_is_better else "<"
    method = f"one-sample t-test, one-sided: mean {sign} {goal:g}"
    if len(xs) < 2:
        return _not_run(method, f"needs >= 2 values, got {len(xs)}", len(xs), 0)
    if not all(math.isfinite(x) for x in xs):
        return _not_run(method, "non-finite values (diverged runs)", len(xs), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_1samp(xs, goal, alternative="greater" if higher_is_better else "less")
    return SignificanceResult(float(res.statistic), float(res.pvalue), method, len(xs), 0)


def meets_target(
    values: Sequence[float], target: float, higher_is_better: bool, alpha: float = 0.01
) -> bool:
    """Whether the seeds establish a record by modded-nanogpt's rule (p < alpha, 0.01)."""
    return meets_target_test(values, target, higher_is_better).significant(alpha)
