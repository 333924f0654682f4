"""Claims: the statistics on hand-computed examples, the registry and CLI, and one quick claim
end to end (sweeps -> store -> verdict -> HTML)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats as sps

from wdlab.claims import available, get, stats
from wdlab.claims.base import Arm, Claim, ClaimData, Evidence, Feature, Trial, config_accepts
from wdlab.cli import main

# ----------------------------------------------------------------------------- statistics


def test_welch_matches_the_formula_by_hand():
    # a = 1,2,3 and b = 4,5,6: both variances 1, se = sqrt(1/3 + 1/3), Welch df = 4.
    res = stats.welch([1, 2, 3], [4, 5, 6], "less")
    se = math.sqrt(2 / 3)
    t = -3 / se
    assert res.statistic == pytest.approx(t)
    assert res.p_value == pytest.approx(sps.t.cdf(t, 4))  # 0.0107
    assert res.p_value == pytest.approx(0.01065, abs=1e-4)
    assert res.effect == pytest.approx(-3.0)
    # one-sided upper bound: -3 + t_{0.95, 4}·se
    assert res.ci[0] == -math.inf
    assert res.ci[1] == pytest.approx(-3 + sps.t.ppf(0.95, 4) * se)
    assert res.p_opposite == pytest.approx(1 - res.p_value)


def test_paired_matches_the_formula_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t = 2·sqrt(3), df 2.
    res = stats.paired([2, 4, 6], [1, 2, 3], "greater")
    se = 1 / math.sqrt(3)
    assert res.statistic == pytest.approx(2 / se)
    assert res.p_value == pytest.approx(sps.t.sf(2 / se, 2))  # 0.0371
    assert res.p_value == pytest.approx(0.0371, abs=1e-4)
    assert res.effect == pytest.approx(2.0)
    assert res.ci[0] == pytest.approx(2 - sps.t.ppf(0.95, 2) * se)  # 0.314
    assert res.ci[1] == math.inf


def test_one_sample_interval_is_for_the_effect():
    # 0.9, 1.0, 1.1 against 1.2: effect -0.2, se 0.1/sqrt(3), df 2.
    res = stats.one_sample([0.9, 1.0, 1.1], 1.2, "less")
    se = 0.1 / math.sqrt(3)
    assert res.effect == pytest.approx(-0.2)
    assert res.statistic == pytest.approx(-0.2 / se)
    assert res.p_value == pytest.approx(sps.t.cdf(-0.2 / se, 2))
    assert res.ci[1] == pytest.approx(-0.2 + sps.t.ppf(0.95, 2) * se)


def test_tests_that_cannot_run_say_why():
    assert "needs >= 2" in stats.welch([1.0], [2.0, 3.0], "less").method
    assert math.isnan(stats.paired([1.0, math.nan], [0.0, 0.0], "greater").p_value)
    assert "non-finite" in stats.one_sample([1.0, math.inf], 0.0, "greater").method
    flat = stats.paired([0.5, 0.6, 0.7], [0.4, 0.5, 0.6], "greater")  # same difference
    assert math.isnan(flat.p_value) and "no spread" in flat.method
    with pytest.raises(ValueError, match="alternative"):
        stats.welch([1, 2], [3, 4], "two-sided")
    with pytest.raises(ValueError, match="one value per seed"):
        stats.paired([1, 2, 3], [1, 2], "less")


def test_one_sided_interval_covers_the_mean_95_percent():
    rng = np.random.default_rng(0)
    covered = 0
    trials = 500  # binomial sd of the coverage: 0.01
    for _ in range(trials):
        x = rng.normal(1.0, 2.0, size=5)
        res = stats.one_sample(x, 0.0, "greater")
        covered += res.ci[0] <= 1.0  # the true effect is 1.0 - 0
    assert 0.92 <= covered / trials <= 0.98


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = stats.holm([0.01, math.nan])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])  # NaN still counts
    assert stats.holm([]) == []


def test_verdicts():
    good = stats.paired([2, 4, 6], [1, 2, 3], "greater")  # p = 0.037
    assert stats.verdict(stats.correct([good])) == stats.REPRODUCES
    # Two comparisons at p = 0.037 each: Holm gives 0.074 for both -> not significant.
    assert stats.verdict(stats.correct([good, good])) == stats.INCONCLUSIVE
    wrong = stats.paired([1, 2, 3], [2, 4, 6], "greater")  # significant the other way
    assert stats.verdict(stats.correct([wrong])) == stats.DOES_NOT
    assert stats.verdict([]) == stats.INCONCLUSIVE


def test_log_optimum_recovers_an_off_grid_vertex_and_keeps_edges():
    grid = [1e-4, 1e-3, 1e-2, 1e-1]
    vertex = 3e-3
    ys = [(math.log(x) - math.log(vertex)) ** 2 for x in grid]
    assert stats.log_optimum(grid, ys) == pytest.approx(vertex)
    assert stats.log_optimum(grid, [1, 2, 3, 4]) == 1e-4  # best at the edge: unrefined
    assert stats.log_optimum(grid, [5, math.nan, 1, 2]) == 1e-2  # NaN neighbour: unrefined
    assert math.isnan(stats.log_optimum(grid, [math.nan] * 4))


def test_log_slope():
    assert stats.log_slope([1, 2, 4, 8], [3 / x for x in (1, 2, 4, 8)]) == pytest.approx(-1.0)
    assert math.isnan(stats.log_slope([1, 2], [1.0, math.nan]))


# ----------------------------------------------------------------------------- registry, CLI


def test_every_claim_is_complete_and_uses_at_least_three_seeds():
    for name in available():
        claim = get(name)
        assert claim.name == name
        for field in ("title", "source", "statement", "statistic", "test"):
            assert getattr(claim, field), f"{name}.{field}"
        for quick in (False, True):
            arms = claim.arms(quick)
            assert arms and all(a.seeds >= 3 for a in arms), name
            assert len({a.key for a in arms}) == len(arms)


def test_unknown_claim_is_one_line_with_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["claims", "run", "grokking-need-wd"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown claim 'grokking-need-wd'" in err and "did you mean 'grokking-needs-wd'" in err


def test_claims_list_names_every_claim_and_its_status(capsys):
    assert main(["claims", "list"]) == 0
    out = capsys.readouterr().out
    for name in available():
        line = next(row for row in out.splitlines() if re.search(rf"\b{re.escape(name)}\b", row))
        missing = get(name).missing()
        status = [cell.strip() for cell in re.split(r"[│|]", line)][3]
        assert status.startswith("needs ") == bool(missing) and (missing or status == "ready")
        assert "trials in" in line


class _Missing(Claim):
    name = "needs-something"
    title = statement = statistic = test = source = "x"
    needs = (Feature("a feature nobody built", lambda: False),)


def test_a_claim_with_a_missing_feature_is_refused_in_one_line(monkeypatch, capsys, tmp_path):
    import wdlab.claims as registry

    monkeypatch.setattr(registry, "get", lambda name: _Missing())
    with pytest.raises(SystemExit) as exit_info:
        main(["claims", "run", "needs-something", "--store", str(tmp_path / "c.db")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a feature nobody built" in err[0]
    assert not (tmp_path / "c.db").exists()


def test_config_accepts():
    assert config_accepts("digits", "optimizer.decay=l2")()
    assert not config_accepts("digits", "optimizer.decay=bogus")()


def test_charlm_frequency_buckets_partition_the_validation_loss():
    from wdlab.config import build_config
    from wdlab.workloads import from_config

    config = build_config("charlm", tiny=True, assignments=["data.frequency_buckets=1"])
    workload = from_config(config)
    model = workload.build_model().eval()
    one = workload.evaluate(model)
    assert one["val_loss_freq0"] == pytest.approx(one["val_loss"], rel=1e-6)
    workload.data_config.frequency_buckets = 4
    four = workload.evaluate(model)
    buckets = [v for k, v in four.items() if k.startswith("val_loss_freq")]
    assert len(buckets) >= 2 and min(buckets) <= four["val_loss"] <= max(buckets)


def test_claim_page_escapes_text(tmp_path):
    from wdlab.claims.page import claim_page
    from wdlab.claims.runner import Outcome

    class Evil(Claim):
        name = "evil"
        title = "<script>alert(1)</script>"
        source = statement = statistic = test = "<b>x</b>"

        def arms(self, quick: bool = False) -> list[Arm]:
            return [Arm("a", "digits")]

    evidence = Evidence.from_tests([stats.paired([2, 4, 6], [1, 2, 3], "greater", "<i>")],
                                   columns=["<c>"], rows=[["<r>"]], notes=["<n>"])
    outcome = Outcome(Evil(), False, evidence.verdict, evidence=evidence)
    text = claim_page(outcome, store=None, out_dir=tmp_path).read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text
    for raw in ("<b>x</b>", "<i>", "<c>", "<r>", "<n>"):
        assert raw not in text


# ----------------------------------------------------------------------------- end to end


def test_quick_claim_end_to_end(tmp_path, capsys):
    """lion-linf-bound --quick: sweeps into the store, the verdict from the store (its numbers
    recomputed here from the raw metrics), a resumed run trains nothing, HTML + README."""
    from wdlab.claims.runner import judge
    from wdlab.store import Store

    db = str(tmp_path / "c.db")
    assert main(["claims", "run", "lion-linf-bound", "--quick", "--store", db, "--quiet"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("lion-linf-bound: ") and "quick budget" in line

    claim = get("lion-linf-bound")
    with Store(db) as store:
        outcome = judge(claim, store, quick=True)
        assert outcome.counts == {"finished": 3}
        sweep = store.get_sweep(outcome.sweeps[0])
        expected = []
        for trial in sorted(store.trials(sweep.id), key=lambda t: t.params["seed"]):
            metrics = store.metrics(trial.run_id)
            per_step: dict[int, float] = {}
            for name, series in metrics.items():
                if name.startswith("mon/lion_bound/"):
                    for step, value in series:
                        per_step[step] = max(per_step.get(step, -math.inf), value)
            steps = sorted(per_step)
            start = steps[-1] - 0.25 * (steps[-1] - steps[0])
            expected.append(max(per_step[s] for s in steps if s >= start))
    evidence = outcome.evidence
    assert [row[2] for row in evidence.rows] == pytest.approx(expected)
    direct = sps.ttest_1samp(expected, 1.01, alternative="less")
    assert evidence.tests[0].p_value == pytest.approx(direct.pvalue)
    assert outcome.status in stats.VERDICTS
    assert outcome.status in line

    # The same command again resumes: nothing new is trained, the verdict is the same.
    assert main(["claims", "run", "lion-linf-bound", "--quick", "--store", db, "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == line
    with Store(db) as store:
        assert len(store.list_runs()) == 3

    out = tmp_path / "report"
    assert main(["claims", "report", "--quick", "--store", db, "-o", str(out)]) == 0
    page = (out / "lion-linf-bound.html").read_text()
    assert outcome.status in page and "data:image/png;base64," in page
    index = (out / "index.html").read_text()
    assert 'href="lion-linf-bound.html"' in index
    readme = (out / "README.md").read_text()
    row = next(r for r in readme.splitlines() if "lion-linf-bound" in r)
    assert "(lion-linf-bound.html)" in row and f"{evidence.p_value():.3g}" in row
    assert "not run yet" in next(r for r in readme.splitlines() if "grokking-needs-wd" in r)


def test_claim_data_selects_trials_by_params():
    trials = [Trial({"x": 1}, s, "finished", None, {"m": float(s)}) for s in range(3)]
    trials.append(Trial({"x": 2}, 0, "diverged", None, {"m": 9.0}))
    data = ClaimData(store=None, trials={"arm": trials})
    value = lambda t: t.final["m"]  # noqa: E731
    assert data.by_seed("arm", value, {"x": 1}) == {0: 0.0, 1: 1.0, 2: 2.0}
    assert math.isnan(data.by_seed("arm", value, {"x": 2})[0])
    assert data.by_seed("arm", value, {"x": 2}, diverged=True) == {0: 9.0}
    assert data.grid("arm", "x", value)[0] == {1: 0.0, 2: pytest.approx(math.nan, nan_ok=True)}


def test_rotational_wrapper_from_a_run_config_keeps_row_norms(tmp_path):
    """optimizer.wrapper=rotational (the hook rotational-warmup needs): every neuron of a
    scale-invariant weight keeps its initial norm, which plain AdamW with decay does not."""
    import torch

    from wdlab import checkpoint, train
    from wdlab.config import build_config
    from wdlab.store import Store
    from wdlab.workloads import from_config

    norms = {}
    for wrapper in ("rotational", None):
        sets = ["steps=20", "train.monitor=off", "optimizer.weight_decay=1.0"]
        if wrapper:
            sets.append(f"optimizer.wrapper={wrapper}")
        config = build_config("digits", tiny=True, assignments=sets)
        with Store(tmp_path / "s.db") as store:
            result = train.run(config, store, tmp_path / "runs")
        assert result.status == "finished"
        weights = checkpoint.read(tmp_path / "runs" / result.run_id / "last.pt",
                                  result.run_id)["model"]  # fmt: skip
        torch.manual_seed(config.seed)
        init = from_config(config).build_model().state_dict()
        # "0.weight": the first Linear, in front of BatchNorm (scale-invariant)
        norms[wrapper] = (weights["0.weight"].norm(dim=1), init["0.weight"].norm(dim=1))
    after, before = norms["rotational"]
    assert torch.allclose(after, before, rtol=1e-4)
    after, before = norms[None]
    assert not torch.allclose(after, before, rtol=1e-2)


def test_interrupted_claim_names_the_command_that_continues(monkeypatch, capsys, tmp_path):
    import wdlab.claims.runner as runner
    from wdlab.sweep import SweepInterrupted

    def stop(*args, **kwargs):
        raise SweepInterrupted("id", "claim-x", {"finished": 1, "diverged": 0, "failed": 0,
                                                 "pending": 2, "running": 0})

    monkeypatch.setattr(runner, "run_claim", stop)
    db = str(tmp_path / "c.db")
    code = main(["claims", "run", "lion-linf-bound", "--quick", "--store", db, "--workers", "2"])
    assert code == 130
    err = capsys.readouterr().err
    assert "1 of 3 trials ended" in err
    again = f"continue with: wdlab claims run lion-linf-bound --store {db} --quick --workers 2"
    assert again in err
