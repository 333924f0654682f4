"""The tests behind a claim's verdict: seeds are the samples, every test is one-sided.

Why t-tests: a claim's statistic is one number per seed (a final loss, a slope, a ratio),
seeds are independent, and with 3-5 of them a rank test cannot reach p < 0.05 at all
(the smallest one-sided Wilcoxon p with n = 3 is 0.125). Welch's t where two arms have their
own seeds, the paired t where they share seeds (same init and data order: the difference per
seed removes that noise), the one-sample t against a stated threshold. Each result carries
the effect (a mean difference in the statistic's units) and its confidence interval, which
is one-sided like the test (scipy's `confidence_interval` of the same result), so "p < α"
and "the interval excludes 0" always agree. Several comparisons in one claim are corrected
with Holm's step-down method (controls the family-wise error, no independence assumed).

Verdicts (`verdict`): "reproduces" when every required comparison is significant after
Holm; "does not reproduce" when some comparison is significant in the opposite direction
(the data contradict the claim); otherwise "inconclusive at this budget".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from scipy import stats

ALPHA = 0.05
ALTERNATIVES = ("greater", "less")
REPRODUCES = "reproduces"
DOES_NOT = "does not reproduce"
INCONCLUSIVE = "inconclusive at this budget"
VERDICTS = (REPRODUCES, DOES_NOT, INCONCLUSIVE)


@dataclass(frozen=True)
class TestResult:
    """One one-sided test. `effect` is mean(a) − mean(b) (paired: mean of a − b; one-sample:
    mean(a) − threshold); `ci` its one-sided (1 − α) interval, (lo, inf) for "greater" and
    (−inf, hi) for "less". `p_adjusted` is Holm's p once the claim's family is corrected
    (equal to p_value for a single test). NaN p: the test could not run (`method` says why)."""

    label: str
    method: str
    alternative: str
    statistic: float
    p_value: float
    effect: float
    ci: tuple[float, float]
    n: int
    p_adjusted: float = math.nan
    p_opposite: float = math.nan  # the same test in the other direction (contradiction)

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p_adjusted < alpha  # NaN < x is False

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "method": self.method,
            "alternative": self.alternative,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "p_adjusted": self.p_adjusted,
            "p_opposite": self.p_opposite,
            "effect": self.effect,
            "ci": list(self.ci),
            "n": self.n,
        }


def _check(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values]


def _flat(values: Sequence[float]) -> bool:
    """Every value equal: a t statistic is 0/0 or ±inf, so the test says nothing."""
    return max(values) - min(values) <= 1e-12 * max(1.0, max(abs(v) for v in values))


def _not_run(label: str, method: str, alternative: str, why: str, n: int) -> TestResult:
    nan = math.nan
    return TestResult(label, f"{method}; not run: {why}", alternative, nan, nan, nan, (nan, nan), n)


def _opposite(alternative: str) -> str:
    return "less" if alternative == "greater" else "greater"


def _from_scipy(
    label: str, method: str, alternative: str, run: Any, effect: float, n: int, alpha: float
) -> TestResult:
    with warnings.catch_warnings():
        # scipy warns on (near-)identical samples; its result (±inf or nan) is still right.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = run(alternative)
        opposite = run(_opposite(alternative))
        try:
            ci = res.confidence_interval(confidence_level=1 - alpha)
            interval = (float(ci.low), float(ci.high))
        except (ValueError, ZeroDivisionError):  # zero spread: no interval
            interval = (math.nan, math.nan)
    p = float(res.pvalue)
    return TestResult(
        label, method, alternative, float(res.statistic), p, effect, interval, n,
        p_adjusted=p, p_opposite=float(opposite.pvalue),
    )  # fmt: skip


def welch(
    a: Sequence[float], b: Sequence[float], alternative: str, label: str = "", alpha: float = ALPHA
) -> TestResult:
    """Welch's t-test that mean(a) > mean(b) ("greater") or < ("less"); a and b have their
    own seeds. Fewer than two values a side or a non-finite value: p = NaN."""
    _check(alternative)
    xa, xb = _finite(a), _finite(b)
    sign = ">" if alternative == "greater" else "<"
    method = f"Welch t-test, one-sided: mean(a) {sign} mean(b)"
    n = len(xa) + len(xb)
    if len(xa) < 2 or len(xb) < 2:
        return _not_run(label, method, alternative, f"needs >= 2 seeds a side, got "
                        f"{len(xa)} and {len(xb)}", n)  # fmt: skip
    if not all(math.isfinite(x) for x in xa + xb):
        return _not_run(label, method, alternative, "non-finite values (diverged runs)", n)
    if _flat(xa) and _flat(xb):
        return _not_run(label, method, alternative, "no spread across seeds (equal values)", n)
    effect = sum(xa) / len(xa) - sum(xb) / len(xb)
    return _from_scipy(
        label, method, alternative,
        lambda alt: stats.ttest_ind(xa, xb, equal_var=False, alternative=alt),
        effect, n, alpha,
    )  # fmt: skip


def paired(
    a: Sequence[float], b: Sequence[float], alternative: str, label: str = "", alpha: float = ALPHA
) -> TestResult:
    """Paired t-test that mean(a − b) > 0 ("greater") or < 0 ("less"); a[i] and b[i] come
    from the same seed."""
    _check(alternative)
    xa, xb = _finite(a), _finite(b)
    sign = ">" if alternative == "greater" else "<"
    method = f"paired t-test over seeds, one-sided: mean(a - b) {sign} 0"
    if len(xa) != len(xb):
        raise ValueError(f"paired samples need one value per seed on both sides, got "
                         f"{len(xa)} and {len(xb)}")  # fmt: skip
    if len(xa) < 2:
        return _not_run(label, method, alternative, f"needs >= 2 seeds, got {len(xa)}", len(xa))
    if not all(math.isfinite(x) for x in xa + xb):
        return _not_run(label, method, alternative, "non-finite values (diverged runs)", len(xa))
    if _flat([x - y for x, y in zip(xa, xb, strict=True)]):
        return _not_run(label, method, alternative,
                        "no spread across seeds (every seed has the same difference)", len(xa))
    effect = sum(x - y for x, y in zip(xa, xb, strict=True)) / len(xa)
    return _from_scipy(
        label, method, alternative,
        lambda alt: stats.ttest_rel(xa, xb, alternative=alt),
        effect, len(xa), alpha,
    )  # fmt: skip


def one_sample(
    a: Sequence[float], threshold: float, alternative: str, label: str = "", alpha: float = ALPHA
) -> TestResult:
    """One-sample t-test that mean(a) > threshold ("greater") or < threshold ("less")."""
    _check(alternative)
    xa = _finite(a)
    sign = ">" if alternative == "greater" else "<"
    method = f"one-sample t-test over seeds, one-sided: mean {sign} {threshold:g}"
    if len(xa) < 2:
        return _not_run(label, method, alternative, f"needs >= 2 seeds, got {len(xa)}", len(xa))
    if not all(math.isfinite(x) for x in xa):
        return _not_run(label, method, alternative, "non-finite values (diverged runs)", len(xa))
    if _flat(xa):
        return _not_run(label, method, alternative, "no spread across seeds (equal values)",
                        len(xa))
    effect = sum(xa) / len(xa) - threshold
    result = _from_scipy(
        label, method, alternative,
        lambda alt: stats.ttest_1samp(xa, threshold, alternative=alt),
        effect, len(xa), alpha,
    )  # fmt: skip
    lo, hi = result.ci  # scipy's interval is for the mean; shift it to the effect
    return replace(result, ci=(lo - threshold, hi - threshold))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; NaN stays NaN and counts as
    a test (a comparison that could not run is not dropped from the family).

    Sorted ascending, p_(i) is multiplied by (m − i) (i = 0..m−1), made monotone by a running
    maximum and capped at 1; p_adj < α exactly where Holm's procedure rejects.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (math.isnan(p_values[i]), p_values[i]))
    adjusted = [math.nan] * m
    running = 0.0
    for rank, i in enumerate(order):
        p = float(p_values[i])
        if math.isnan(p):
            continue  # NaN sorts last: everything after it is NaN too
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def correct(tests: Sequence[TestResult]) -> list[TestResult]:
    """The tests with Holm-adjusted p-values (the family is the claim's comparisons)."""
    adjusted = holm([t.p_value for t in tests])
    return [replace(t, p_adjusted=p) for t, p in zip(tests, adjusted, strict=True)]


def verdict(tests: Sequence[TestResult], alpha: float = ALPHA) -> str:
    """reproduces / does not reproduce / inconclusive at this budget (module docstring).

    A contradiction is judged on the opposite-direction p-values, Holm-corrected as a family
    of their own.
    """
    if not tests:
        return INCONCLUSIVE
    if all(t.p_adjusted < alpha for t in tests):
        return REPRODUCES
    if any(p < alpha for p in holm([t.p_opposite for t in tests])):
        return DOES_NOT
    return INCONCLUSIVE


# --------------------------------------------------------------------------- estimators


def log_optimum(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The x (> 0) minimizing y on a log-spaced grid: the best grid point refined by a
    parabola through it and its two neighbours in log x (the grid's edge, unrefined, when
    the best point is an end or the parabola opens downward). Non-finite y counts as worse
    than every finite one; NaN when no y is finite.

    Why refine: with 4-6 grid points an argmin moves in whole grid steps, so a per-seed
    optimum would carry that quantization as noise into every test built on it.
    """
    pts = sorted((float(x), float(y)) for x, y in zip(xs, ys, strict=True))
    finite = [(x, y) for x, y in pts if math.isfinite(y)]
    if not finite:
        return math.nan
    if any(x <= 0 for x, _ in pts):
        raise ValueError(f"log_optimum needs x > 0, got {[x for x, _ in pts]}")
    i = min(range(len(pts)), key=lambda k: pts[k][1] if math.isfinite(pts[k][1]) else math.inf)
    if i == 0 or i == len(pts) - 1:
        return pts[i][0]
    (x0, y0), (x1, y1), (x2, y2) = pts[i - 1], pts[i], pts[i + 1]
    if not (math.isfinite(y0) and math.isfinite(y2)):
        return x1
    u0, u1, u2 = math.log(x0), math.log(x1), math.log(x2)
    denom = (u0 - u1) * (u0 - u2) * (u1 - u2)
    a = (u2 * (y1 - y0) + u1 * (y0 - y2) + u0 * (y2 - y1)) / denom
    b = (u2 * u2 * (y0 - y1) + u1 * u1 * (y2 - y0) + u0 * u0 * (y1 - y2)) / denom
    if a <= 0:
        return x1
    u = min(max(-b / (2 * a), u0), u2)
    return math.exp(u)


def log_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y on log x (both > 0): the exponent of y ∝ x^k. NaN when
    fewer than two finite points remain or x does not vary."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True)
           if math.isfinite(y) and y > 0 and x > 0]  # fmt: skip
    if len(pts) < 2:
        return math.nan
    mx = sum(u for u, _ in pts) / len(pts)
    my = sum(v for _, v in pts) / len(pts)
    sxx = sum((u - mx) ** 2 for u, _ in pts)
    if sxx == 0:
        return math.nan
    return sum((u - mx) * (v - my) for u, v in pts) / sxx
