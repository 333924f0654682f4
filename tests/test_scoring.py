"""Scoring on hand-computed examples; the worked examples in docs/scoring.md are these numbers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from wdlab.scoring import (
    algoperf_score,
    beats,
    external_tuning_time,
    lr_sensitivity,
    median_time_to_target,
    meets_target,
    meets_target_test,
    one_sided_test,
    performance_profile,
    performance_ratios,
    time_to_target,
)

INF = math.inf
TOL = 1e-12

# ----------------------------------------------------------------------------- LR sensitivity

# Sweep of 9 learning rates; the range [3e-4, 3e-1] holds the middle 7.
SWEEP_LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
SWEEP_LOSSES = [2.0, 2.9, 2.6, 2.4, 2.5, 2.8, math.nan, 4.0, math.nan]
INIT_LOSS = 3.5


def test_lr_sensitivity_hand_example():
    # In range: 3e-4..3e-1 -> losses 2.9, 2.6, 2.4, 2.5, 2.8, nan, 4.0
    # capped at l0 = 3.5:        2.9, 2.6, 2.4, 2.5, 2.8, 3.5, 3.5   (nan diverged, 4.0 > l0)
    # l* = 2.4 (the 2.0 at lr 1e-4 is out of range and must not count)
    # gaps: 0.5 + 0.2 + 0 + 0.1 + 0.4 + 1.1 + 1.1 = 3.4  ->  S = 3.4 / 7
    s = lr_sensitivity(SWEEP_LRS, SWEEP_LOSSES, INIT_LOSS)
    assert s == pytest.approx(3.4 / 7, abs=TOL)


def test_lr_sensitivity_accepts_numpy_and_custom_range():
    # Range [1e-3, 1e-2]: losses 2.6, 2.4, 2.5; l* = 2.4; gaps 0.2, 0, 0.1 -> 0.3 / 3
    s = lr_sensitivity(np.array(SWEEP_LRS), np.array(SWEEP_LOSSES), np.float64(3.5), (1e-3, 1e-2))
    assert s == pytest.approx(0.1, abs=TOL)


def test_lr_sensitivity_flat_sweep_is_zero_and_inf_counts_as_diverged():
    assert lr_sensitivity([1e-3, 1e-2], [2.0, 2.0], 3.0) == 0.0
    # +inf diverged -> l0 = 3.0: gaps 0 and 1 -> 0.5
    assert lr_sensitivity([1e-3, 1e-2], [2.0, math.inf], 3.0) == pytest.approx(0.5, abs=TOL)


def test_lr_sensitivity_is_nan_when_nothing_trained():
    assert math.isnan(lr_sensitivity([1e-3, 1e-2], [math.nan, math.nan], 3.0))
    assert math.isnan(lr_sensitivity([1e-3, 1e-2], [3.0, 5.0], 3.0))


def test_lr_sensitivity_float_endpoint_counts_as_in_range():
    # 0.1 * 3 == 0.30000000000000004 > 0.3: still the grid's 3e-1 point.
    # In range: 2.0 and 3.0 (l0 = 3.0): gaps 0 and 1 -> 0.5
    s = lr_sensitivity([1e-3, 0.1 * 3], [2.0, 3.0], 3.0)
    assert s == pytest.approx(0.5, abs=TOL)


def test_lr_sensitivity_errors_name_the_argument():
    with pytest.raises(ValueError, match="lr_range"):
        lr_sensitivity([1e-5, 1.0], [2.0, 2.0], 3.0)
    with pytest.raises(ValueError, match="lr_range"):
        lr_sensitivity([1e-3], [2.0], 3.0, lr_range=(1e-1, 1e-2))
    with pytest.raises(ValueError, match="lr_range"):
        lr_sensitivity([1e-3], [2.0], 3.0, lr_range=(1e-3,))
    with pytest.raises(ValueError, match="same length"):
        lr_sensitivity([1e-3, 1e-2], [2.0], 3.0)
    with pytest.raises(ValueError, match="more than once"):
        lr_sensitivity([1e-3, 1e-3], [2.0, 2.1], 3.0)
    with pytest.raises(ValueError, match="init_loss"):
        lr_sensitivity([1e-3], [2.0], math.nan)
    with pytest.raises(ValueError, match=r"lrs\[1\]"):
        lr_sensitivity([1e-3, -1.0], [2.0, 2.0], 3.0)


# ----------------------------------------------------------------------------- time to target


def test_time_to_target_first_crossing_inclusive():
    acc = [(0, 0.10), (10, 0.50), (20, 0.93), (30, 0.91), (40, 0.97)]
    assert time_to_target(acc, 0.92, higher_is_better=True) == 20.0
    assert time_to_target(acc, 0.93, higher_is_better=True) == 20.0  # equality meets it
    assert time_to_target(acc, 0.99, higher_is_better=True) == INF
    loss = [(1.5, 3.0), (2.5, math.nan), (3.5, 2.2), (4.5, 2.0)]
    assert time_to_target(loss, 2.2, higher_is_better=False) == 3.5
    assert time_to_target(loss, 0.0, higher_is_better=False) == INF
    assert time_to_target([], 1.0, higher_is_better=False) == INF


def test_time_to_target_unsorted_curve_takes_earliest():
    assert time_to_target([(30, 0.95), (20, 0.94), (10, 0.5)], 0.9, True) == 20.0


def test_time_to_target_errors():
    with pytest.raises(ValueError, match="target"):
        time_to_target([(0, 1.0)], math.nan, True)
    with pytest.raises(ValueError, match=r"curve\[0\]"):
        time_to_target([(math.nan, 1.0)], 0.5, True)
    with pytest.raises(ValueError, match=r"curve\[1\]"):
        time_to_target([(0, 1.0), (1, 2.0, 3.0)], 0.5, True)


def test_median_time_to_target():
    assert median_time_to_target([3.0, 1.0, 2.0]) == 2.0
    assert median_time_to_target([1.0, 2.0, INF]) == 2.0  # one miss of three
    assert median_time_to_target([1.0, 2.0, 3.0, INF]) == 2.5  # middle values 2 and 3
    assert median_time_to_target([1.0, INF, INF]) == INF  # more than half missed
    assert median_time_to_target([1.0, 2.0, INF, INF]) == INF  # exactly half: upper middle is inf
    assert median_time_to_target([INF]) == INF
    with pytest.raises(ValueError, match="times_per_seed"):
        median_time_to_target([])
    with pytest.raises(ValueError, match=r"times_per_seed\[1\]"):
        median_time_to_target([1.0, math.nan])


def test_external_tuning_time():
    # fastest per study: 3, 4, inf -> median 4
    assert external_tuning_time([[5.0, 3.0, INF], [4.0, 8.0], [INF, INF]]) == 4.0
    # two of three studies missed -> inf
    assert external_tuning_time([[5.0], [INF], [INF, INF]]) == INF
    with pytest.raises(ValueError, match=r"study_trials\[1\]"):
        external_tuning_time([[1.0], []])


# ----------------------------------------------------------------------------- AlgoPerf

# 3 submissions x 4 workloads, r_max = 4.
TIMES = {
    "A": {"w1": 10.0, "w2": 30.0, "w3": 50.0, "w4": INF},
    "B": {"w1": 20.0, "w2": 15.0, "w3": 75.0, "w4": 80.0},
    "C": {"w1": 40.0, "w2": 45.0, "w3": 250.0, "w4": 20.0},
}
# best per workload: w1 10 (A), w2 15 (B), w3 50 (A), w4 20 (C)
# r:      w1   w2   w3              w4
#   A     1    2    1               inf (miss)
#   B     2    1    1.5             4   (exactly r_max: counts)
#   C     4    3    5 > 4 -> inf    1
# rho(tau) on [1, 4]:
#   A: [1, 2): 2/4   [2, 4]: 3/4
#   B: [1, 1.5): 1/4   [1.5, 2): 2/4   [2, 4): 3/4   tau = 4: 4/4
#   C: [1, 3): 1/4   [3, 4): 2/4   tau = 4: 3/4
# integral over [1, 4] (the point tau = 4 has no width):
#   A: 1*(2/4) + 2*(3/4)              = 2.0    -> B = 2/3
#   B: 0.5*(1/4) + 0.5*(2/4) + 2*(3/4) = 1.875  -> B = 0.625
#   C: 2*(1/4) + 1*(2/4)              = 1.0    -> B = 1/3
EXPECTED_SCORE = {"A": 2.0 / 3.0, "B": 1.875 / 3.0, "C": 1.0 / 3.0}
EXPECTED_PROFILE = {  # at the knots 1, 1.5, 2, 3, 4
    "A": [(1.0, 0.5), (1.5, 0.5), (2.0, 0.75), (3.0, 0.75), (4.0, 0.75)],
    "B": [(1.0, 0.25), (1.5, 0.5), (2.0, 0.75), (3.0, 0.75), (4.0, 1.0)],
    "C": [(1.0, 0.25), (1.5, 0.25), (2.0, 0.25), (3.0, 0.5), (4.0, 0.75)],
}


def test_performance_ratios_hand_example():
    pr = performance_ratios(TIMES)
    assert pr.unsolved == [] and pr.workloads == ["w1", "w2", "w3", "w4"]
    assert pr.ratios["A"] == {"w1": 1.0, "w2": 2.0, "w3": 1.0, "w4": INF}
    assert pr.ratios["B"] == {"w1": 2.0, "w2": 1.0, "w3": 1.5, "w4": 4.0}
    assert pr.ratios["C"] == {"w1": 4.0, "w2": 3.0, "w3": INF, "w4": 1.0}


def test_performance_profile_knots_hand_example():
    profile = performance_profile(TIMES)
    assert set(profile) == set(EXPECTED_PROFILE)
    for sub, points in EXPECTED_PROFILE.items():
        assert len(profile[sub]) == len(points)
        for (tau, rho), (tau_e, rho_e) in zip(profile[sub], points, strict=True):
            assert tau == pytest.approx(tau_e, abs=TOL)
            assert rho == pytest.approx(rho_e, abs=TOL)


def test_performance_profile_at_given_taus():
    # between knots the step holds its left value; below 1 nothing is within tau
    profile = performance_profile(TIMES, taus=[0.5, 1.25, 1.999, 3.5, 10.0])
    assert [rho for _, rho in profile["A"]] == [0.0, 0.5, 0.5, 0.75, 0.75]
    assert [rho for _, rho in profile["B"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [rho for _, rho in profile["C"]] == [0.0, 0.25, 0.25, 0.5, 0.75]


def test_algoperf_score_hand_example():
    scores = algoperf_score(TIMES)
    for sub, expected in EXPECTED_SCORE.items():
        assert scores[sub] == pytest.approx(expected, abs=TOL)


def test_algoperf_score_equals_piecewise_integral_of_profile():
    # Integrate the knots independently: rho is constant on [tau_i, tau_{i+1}).
    profile = performance_profile(TIMES)
    scores = algoperf_score(TIMES)
    for sub, points in profile.items():
        area = sum(
            (t1 - t0) * rho0 for (t0, rho0), (t1, _) in zip(points, points[1:], strict=False)
        )
        assert scores[sub] == pytest.approx(area / 3.0, abs=TOL)


def test_best_everywhere_scores_one_and_all_misses_zero():
    times = {
        "best": {"a": 1.0, "b": 2.0, "c": 3.0},
        "mid": {"a": 2.0, "b": 3.0, "c": 6.0},
        "none": {"a": INF, "b": INF, "c": INF},
    }
    scores = algoperf_score(times)
    assert scores["best"] == 1.0
    assert scores["none"] == 0.0
    # mid: r = 2, 1.5, 2 -> (2 + 2.5 + 2) / (3 * 3) = 6.5 / 9
    assert scores["mid"] == pytest.approx(6.5 / 9.0, abs=TOL)
    profile = performance_profile(times)
    assert all(rho == 0.0 for _, rho in profile["none"])
    assert all(rho == 1.0 for _, rho in profile["best"])


def test_ties_both_count_as_best():
    times = {"x": {"a": 5.0, "b": 7.0}, "y": {"a": 5.0, "b": 14.0}}
    scores = algoperf_score(times)
    assert scores["x"] == 1.0
    # y: r = 1, 2 -> (3 + 2) / (2 * 3) = 5/6
    assert scores["y"] == pytest.approx(5.0 / 6.0, abs=TOL)


def test_single_workload_and_r_exactly_r_max():
    times = {"fast": {"only": 2.0}, "edge": {"only": 8.0}, "slow": {"only": 8.000001}}
    pr = performance_ratios(times)
    assert pr.ratios["edge"]["only"] == 4.0  # r == r_max is not a miss ...
    assert pr.ratios["slow"]["only"] == INF  # ... anything beyond it is
    profile = performance_profile(times, taus=[4.0])
    assert profile["edge"] == [(4.0, 1.0)] and profile["slow"] == [(4.0, 0.0)]
    scores = algoperf_score(times)
    # ... but it adds no area: r_max - r = 0, same as a miss
    assert scores == {"fast": 1.0, "edge": 0.0, "slow": 0.0}
    # a smaller r_max: r = 4 is now a miss; with r_max = 5, (5 - 4) / 4 = 0.25
    assert algoperf_score(times, r_max=3.0)["edge"] == 0.0
    assert algoperf_score(times, r_max=5.0)["edge"] == pytest.approx(0.25, abs=TOL)


def test_unsolved_workload_left_out_and_reported():
    times = {
        "A": {"w1": 1.0, "w2": 3.0, "dead": INF},
        "B": {"w1": 2.0, "w2": 1.0, "dead": INF},
    }
    assert performance_ratios(times).unsolved == ["dead"]
    with pytest.warns(UserWarning, match="dead"):
        scores = algoperf_score(times)
    # over w1, w2 only: A r = 1, 3 -> (3 + 1) / 6 ; B r = 2, 1 -> (2 + 3) / 6
    assert scores["A"] == pytest.approx(4.0 / 6.0, abs=TOL)
    assert scores["B"] == pytest.approx(5.0 / 6.0, abs=TOL)
    with pytest.warns(UserWarning, match="dead"):
        profile = performance_profile(times, taus=[1.0])
    assert profile == {"A": [(1.0, 0.5)], "B": [(1.0, 0.5)]}


def test_nobody_solved_anything_scores_zero():
    times = {"A": {"w": INF}, "B": {"w": INF}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert algoperf_score(times) == {"A": 0.0, "B": 0.0}
        assert performance_profile(times) == {
            "A": [(1.0, 0.0), (4.0, 0.0)],
            "B": [(1.0, 0.0), (4.0, 0.0)],
        }


def test_profile_errors_name_the_field():
    with pytest.raises(ValueError, match=r"times\['B'\]"):
        algoperf_score({"A": {"w1": 1.0, "w2": 2.0}, "B": {"w1": 1.0}})
    with pytest.raises(ValueError, match=r"times\['A'\]\['w1'\]"):
        algoperf_score({"A": {"w1": math.nan}})
    with pytest.raises(ValueError, match=r"times\['A'\]\['w1'\]"):
        algoperf_score({"A": {"w1": 0.0}})
    with pytest.raises(ValueError, match="r_max"):
        algoperf_score(TIMES, r_max=1.0)
    with pytest.raises(ValueError, match="times"):
        algoperf_score({})


# ----------------------------------------------------------------------------- significance

FAST = [1.00, 1.10, 0.90, 1.05, 0.95]
SLOW = [2.00, 2.10, 1.90, 2.05, 1.95]
SIMILAR = [1.02, 0.98, 1.10, 0.92, 1.00]


def _welch_less(a, b):
    """Welch's t and one-sided p computed from the formula, not from ttest_ind."""
    ma, mb = np.mean(a), np.mean(b)
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, stats.t.cdf(t, df)


def test_one_sided_test_matches_scipy_and_formula():
    for a, b in [(FAST, SLOW), (FAST, SIMILAR), (SLOW, FAST)]:
        for alternative in ("less", "greater"):
            res = one_sided_test(a, b, alternative)
            ref = stats.ttest_ind(a, b, equal_var=False, alternative=alternative)
            assert res.statistic == pytest.approx(ref.statistic, abs=TOL)
            assert res.p_value == pytest.approx(ref.pvalue, abs=TOL)
            assert (res.n_a, res.n_b) == (5, 5)
        t, p_less = _welch_less(a, b)
        res = one_sided_test(a, b)
        assert res.statistic == pytest.approx(t, rel=1e-9)
        assert res.p_value == pytest.approx(p_less, rel=1e-9, abs=1e-15)


def test_clear_difference_is_significant_and_none_is_not():
    clear = one_sided_test(FAST, SLOW)
    assert clear.p_value < 1e-6
    assert beats(FAST, SLOW) and not beats(SLOW, FAST)
    same = one_sided_test(FAST, SIMILAR)
    assert same.p_value > 0.3
    assert not beats(FAST, SIMILAR) and not beats(SIMILAR, FAST)
    # higher is better (accuracy): SLOW's values are higher, so SLOW beats FAST
    assert beats(SLOW, FAST, higher_is_better=True)


def test_one_sided_test_never_raises_on_too_few_or_diverged():
    res = one_sided_test([1.0], [2.0, 3.0])
    assert math.isnan(res.p_value) and math.isnan(res.statistic)
    assert "not run" in res.method and (res.n_a, res.n_b) == (1, 2)
    assert math.isnan(one_sided_test([], []).p_value)
    res = one_sided_test([1.0, math.nan, 1.1], SLOW)
    assert math.isnan(res.p_value) and "non-finite" in res.method
    assert not beats([1.0], SLOW) and not beats([1.0, math.inf], SLOW)
    with pytest.raises(ValueError, match="alternative"):
        one_sided_test(FAST, SLOW, "two-sided")
    with pytest.raises(ValueError, match="alpha"):
        beats(FAST, SLOW, alpha=0.0)


def test_meets_target_test_matches_scipy_and_formula():
    losses = [3.270, 3.275, 3.272, 3.268, 3.271]
    res = meets_target_test(losses, 3.28, higher_is_better=False)
    ref = stats.ttest_1samp(losses, 3.28, alternative="less")
    assert res.statistic == pytest.approx(ref.statistic, abs=TOL)
    assert res.p_value == pytest.approx(ref.pvalue, abs=TOL)
    t = (np.mean(losses) - 3.28) / (np.std(losses, ddof=1) / math.sqrt(len(losses)))
    assert res.statistic == pytest.approx(t, rel=1e-9)
    assert res.p_value == pytest.approx(stats.t.cdf(t, len(losses) - 1), rel=1e-9)
    assert (res.n_a, res.n_b) == (5, 0)
    assert res.p_value < 0.01 and meets_target(losses, 3.28, higher_is_better=False)
    # target 3.272 sits at the mean: no record
    assert not meets_target(losses, 3.272, higher_is_better=False)
    # accuracy: mean 0.95 against 0.9, higher is better
    accs = [0.95, 0.96, 0.94, 0.95]
    ref = stats.ttest_1samp(accs, 0.9, alternative="greater")
    res = meets_target_test(accs, 0.9, higher_is_better=True)
    assert res.p_value == pytest.approx(ref.pvalue, abs=TOL)
    assert meets_target(accs, 0.9, higher_is_better=True)
    assert not meets_target(accs, 0.9, higher_is_better=False)


def test_meets_target_test_never_raises_on_data():
    assert math.isnan(meets_target_test([3.0], 3.28, False).p_value)
    assert math.isnan(meets_target_test([3.0, math.nan], 3.28, False).p_value)
    assert not meets_target([3.0], 3.28, False)
    with pytest.raises(ValueError, match="target"):
        meets_target_test([3.0, 3.1], math.inf, False)
