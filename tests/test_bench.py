"""bench: external tuning over stored sweeps, scored the AlgoPerf way."""

from __future__ import annotations

import argparse
import math

import pytest

from wdlab import scoring
from wdlab.bench import add_arguments, bench_main, run_bench, search_space
from wdlab.errors import ConfigError
from wdlab.store import Store


def test_bench_scores_match_scoring_on_reported_times(tmp_path, capsys):
    db = tmp_path / "b.db"
    opts = ["adamw", "lion"]
    result = run_bench(
        opts, ["teacher"], db, trials=2, studies=1, quick=True, workers=1,
        measure="steps", progress=False,
    )  # fmt: skip
    assert "4 trials" in capsys.readouterr().out  # the estimate is printed up front
    with Store(db) as store:
        for opt in opts:
            (sweep_id,) = result.sweep_ids[opt]["teacher"]
            runs = [store.get_run(t.run_id) for t in store.trials(sweep_id)]
            assert len(runs) == 2 and not result.failures
            for run in runs:
                assert run.config["optimizer"]["name"] == opt
                (lo, hi), (wlo, whi) = search_space(opt)
                assert lo <= run.config["optimizer"]["lr"] <= hi
                assert wlo <= run.config["optimizer"]["weight_decay"] <= whi
            # Trial times straight from the runs: steps to target, a miss is inf.
            expected = sorted(
                float(r.result["steps_to_target"]) if r.result["reached"] else math.inf
                for r in runs
            )
            assert sorted(result.trial_times[opt]["teacher"][0]) == expected
            assert result.times[opt]["teacher"] == min(expected)
    # At least one optimizer reached the target, so the scores are not trivially all 0.
    assert any(math.isfinite(result.times[o]["teacher"]) for o in opts)
    recomputed = scoring.algoperf_score(result.times, r_max=4.0)
    assert result.scores == recomputed
    assert all(0.0 <= s <= 1.0 for s in result.scores.values())
    assert result.profile_png is not None and result.profile_png.read_bytes()[:4] == b"\x89PNG"

    # The CLI entry resumes the same sweeps (no new runs) and prints the scores.
    with Store(db) as store:
        before = len(store.list_runs())
    parser = argparse.ArgumentParser()
    parser.add_argument("--store")
    add_arguments(parser)
    args = parser.parse_args(
        ["--store", str(db), "--optimizers", "adamw,lion", "--workloads", "teacher", "--quick",
         "--trials", "2", "--measure", "steps", "--quiet", "--out-dir", str(tmp_path / "o")]
    )  # fmt: skip
    assert bench_main(args) == 0
    out = capsys.readouterr().out
    for opt in opts:
        assert f"{result.scores[opt]:.3f}" in out
    with Store(db) as store:
        assert len(store.list_runs()) == before
    assert (tmp_path / "o" / "bench_profile.png").is_file()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"optimizers": ["adamq"]}, "optimizers"),
        ({"workloads": ["mnist"]}, "workloads"),
        ({"trials": 0}, "trials"),
        ({"studies": 0}, "studies"),
    ],
)
def test_bench_rejects_bad_arguments(tmp_path, kwargs, field):
    args = {"optimizers": ["adamw"], "workloads": ["teacher"], "trials": 1, "studies": 1}
    args.update(kwargs)
    with pytest.raises(ConfigError) as err:
        run_bench(
            args["optimizers"], args["workloads"], tmp_path / "b.db",
            trials=args["trials"], studies=args["studies"], quick=True, workers=1,
        )  # fmt: skip
    assert err.value.field == field and f"--{field}" in str(err.value)
    assert not (tmp_path / "b.db").exists()  # nothing written before the arguments are checked
