"""The Polar Express coefficients: one quintic per Newton-Schulz iteration, derived here.

Amsel, Persson, Musco and Gower 2025 ("The Polar Express: Optimal Matrix Sign Methods and
Their Application to the Muon Algorithm", arXiv 2505.16932, Algorithm 1). Muon's fixed
quintic (3.4445, -4.7750, 2.0315) is applied at every iteration; Polar Express picks, for
iteration t, the odd quintic p_t(x) = a x + b x^3 + c x^5 that is the minimax (equioscillating)
approximation of 1 on the interval [l_t, u_t] the singular values are known to lie in, and
then narrows the interval to [p_t(l_t), 2 - p_t(l_t)]. Greedy is optimal for this problem
(the paper's Theorem 4.1), so each p_t depends only on l_t and the list for n iterations is
the first n entries of one sequence. Two finite-precision guards from the paper:
  cushion  p_t is fitted on [max(l_t, cushion*u_t), u_t] and then rescaled so that p_t(l_t)
           and p_t(u_t) are centred on 1 (a too-aggressive polynomial amplifies rounding);
  safety   every fitted polynomial is evaluated at x/safety (a -> a/s, b -> b/s^3,
           c -> c/s^5) and the input is divided by safety*||X||_F, so singular values pushed
           a little above 1 by bfloat16 rounding stay inside the fitted interval.
Computed in float64 with numpy (a 4x4 Remez exchange); cached, so a step pays nothing.
tests/test_optim_muon.py checks the result against the paper's table.
"""

from __future__ import annotations

import functools
import math

import numpy as np

LOWER = 1e-3
"""l_0: the smallest singular value (relative to ||X||_F) the iteration is tuned for."""
CUSHION = 0.02407327424182761
"""The paper's cushion (chosen there so that the first polynomial is not too steep)."""
SAFETY = 1.01
"""The paper's safety factor on the input norm and on every fitted polynomial."""

Quintic = tuple[float, float, float]


def optimal_quintic(lo: float, hi: float) -> tuple[Quintic, bool]:
    """The odd quintic closest to 1 in max-norm on [lo, hi], and whether it is the limit.

    Remez exchange: p - 1 equioscillates at lo, q, r, hi (p(lo) = 1 - E, p(q) = 1 + E, ...),
    solved for (a, b, c, E); q and r move to the critical points of p (the roots of
    p'(x) = a + 3b x^2 + 5c x^4, a quadratic in x^2) until E stops changing. When lo/hi is
    within 5e-6 of 1 the system is singular and p is its limit, the degree-5 Newton-Schulz
    polynomial (15x - 10x^3 + 3x^5)/8 scaled to hi.
    """
    if not 0 < lo <= hi:
        raise ValueError(f"optimal_quintic needs 0 < lo <= hi, got lo={lo!r}, hi={hi!r}")
    if lo / hi >= 1 - 5e-6:
        return (15 / 8 / hi, -10 / 8 / hi**3, 3 / 8 / hi**5), True
    q, r = (3 * lo + hi) / 4, (lo + 3 * hi) / 4
    previous = math.inf
    for _ in range(100):
        system = np.array([[x, x**3, x**5, sign]
                           for x, sign in ((lo, 1.0), (q, -1.0), (r, 1.0), (hi, -1.0))])
        a, b, c, err = np.linalg.solve(system, np.ones(4))
        root = math.sqrt(max(9 * b * b - 20 * a * c, 0.0))
        y1, y2 = sorted(((-3 * b - root) / (10 * c), (-3 * b + root) / (10 * c)))
        q, r = math.sqrt(y1), math.sqrt(y2)
        if abs(err - previous) < 1e-15:
            break
        previous = err
    return (float(a), float(b), float(c)), False


@functools.cache
def unsafe_schedule(steps: int, lower: float = LOWER, cushion: float = CUSHION
                    ) -> tuple[tuple[Quintic, bool], ...]:
    """The paper's Algorithm 1 before the safety factor: (p_t, is_limit) for t < steps."""
    lo, hi = lower, 1.0
    out: list[tuple[Quintic, bool]] = []
    for _ in range(steps):
        (a, b, c), limit = optimal_quintic(max(lo, cushion * hi), hi)
        rescale = 2.0 / (_p((a, b, c), lo) + _p((a, b, c), hi))  # centre p(lo), p(hi) on 1
        poly = (a * rescale, b * rescale, c * rescale)
        out.append((poly, limit))
        lo = _p(poly, lo)
        hi = 2.0 - lo
    return tuple(out)


@functools.cache
def polar_express(steps: int, lower: float = LOWER, cushion: float = CUSHION,
                  safety: float = SAFETY) -> tuple[Quintic, ...]:
    """Per-iteration (a, b, c) of Polar Express for `steps` iterations, safety applied to
    every fitted polynomial (not to the exact limit polynomial, as in the paper's table).
    Pair it with an input divided by safety*||X||_F (functional.newton_schulz does)."""
    return tuple(
        poly if limit else (poly[0] / safety, poly[1] / safety**3, poly[2] / safety**5)
        for poly, limit in unsafe_schedule(steps, lower, cushion)
    )


def _p(poly: Quintic, x: float) -> float:
    a, b, c = poly
    return a * x + b * x**3 + c * x**5
