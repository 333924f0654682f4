"""Sweeps: axis parsing, trial generation, the local pool and Ray, crash-safe resume."""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from wdlab.errors import ConfigError
from wdlab.store import Store
from wdlab.sweep import (
    RangeSpec,
    SweepSpec,
    parse_axis,
    parse_grid,
    run_sweep,
    runs_root_for,
    trial_config,
)

# ---------------------------------------------------------------- parsing


def test_log_range_matches_the_formula() -> None:
    axis = parse_axis("1e-4:1e-1:7", flag="--lr")
    assert isinstance(axis, RangeSpec)
    values = axis.grid("--lr")
    expected = [10 ** (-4 + 3 * i / 6) for i in range(7)]  # lo·(hi/lo)^(i/(n−1))
    assert len(values) == 7
    assert values[0] == 1e-4 and values[-1] == 0.1  # ends are exact, not float tails
    for got, want in zip(values, expected, strict=True):
        assert math.isclose(got, want, rel_tol=1e-11)
    ratios = [b / a for a, b in itertools.pairwise(values)]
    assert all(math.isclose(r, 10**0.5, rel_tol=1e-10) for r in ratios)


def test_integer_range_stays_integer() -> None:
    assert parse_axis("16:256:5", flag="--grid model.width").grid("x") == [16, 32, 64, 128, 256]


def test_lists_are_literal() -> None:
    assert parse_axis("adamw,lion", flag="--optimizer") == ["adamw", "lion"]
    wd = parse_axis("0,0.01,0.1", flag="--wd")
    assert wd == [0, 0.01, 0.1]
    assert [type(v) for v in wd] == [int, float, float]
    assert parse_axis("true,false") == [True, False]
    assert parse_grid("model.width=32,64") == ("model.width", [32, 64])


@pytest.mark.parametrize(
    ("flag", "text"),
    [
        ("--lr", "0:1e-1:3"),  # log range through zero
        ("--lr", "1e-1:1e-4:3"),  # reversed
        ("--wd", "a:b:3"),
        ("--lr", "1e-4:1e-1:x"),
        ("--lr", "1e-4:1e-1:2.5"),
        ("--lr", "1:2:3:4"),
        ("--optimizer", "adamw,,lion"),
        ("--lr", ""),
    ],
)
def test_axis_errors_name_the_flag(flag: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_axis(text, flag=flag)
    message = str(info.value)
    assert message.startswith(flag) and "\n" not in message


def test_grid_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="^--grid"):
        parse_grid("model.width")
    spec = SweepSpec.create(workload="teacher", axes={"optimizer.lr": parse_axis("1e-3:1e-1")})
    with pytest.raises(ConfigError, match="^--lr .*needs a count"):
        spec.trials()


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"sample": "halton", "axes": {"optimizer.lr": [1.0]}}, "--trials"),
        ({"n_trials": 4, "axes": {"optimizer.lr": [1.0]}}, "--trials"),
        ({"axes": {"seed": [1, 2]}}, "--seeds"),
        ({"seeds": 0}, "--seeds"),
    ],
)
def test_spec_errors_are_one_line(values: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        SweepSpec.create(workload="teacher", **values)
    assert field in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- trials


def test_grid_is_the_product_times_seeds() -> None:
    axes = {
        "optimizer.name": parse_axis("adamw,lion"),
        "optimizer.lr": parse_axis("1e-4:1e-1:7"),
        "optimizer.weight_decay": parse_axis("0,0.01,0.1"),
    }
    trials = SweepSpec.create(workload="teacher", axes=axes, seeds=3).trials()
    assert len(trials) == 2 * 7 * 3 * 3
    keys = {tuple(sorted(t.items())) for t in trials}
    assert len(keys) == len(trials)  # no duplicates
    columns = [axes["optimizer.name"], axes["optimizer.lr"].grid("--lr"), [0, 0.01, 0.1], [0, 1, 2]]
    names = ["optimizer.name", "optimizer.lr", "optimizer.weight_decay", "seed"]
    assert keys == {tuple(sorted(zip(names, c, strict=True))) for c in itertools.product(*columns)}


def test_halton_is_deterministic_log_uniform_and_in_bounds() -> None:
    from scipy.stats import qmc

    axes = {"optimizer.lr": parse_axis("1e-4:1e-1"), "optimizer.name": parse_axis("adamw,lion")}
    spec = SweepSpec.create(workload="teacher", axes=axes, sample="halton", n_trials=32, seeds=2)
    trials = spec.trials()
    assert trials == spec.trials()
    assert len(trials) == 64 and {t["seed"] for t in trials} == {0, 1}
    other = SweepSpec.create(
        workload="teacher", axes=axes, sample="halton", n_trials=32, sample_seed=1
    )
    assert other.trials()[:32] != [{**t, "seed": 0} for t in trials[:32]]
    # Independently: the lr's position in log space is the scrambled Halton coordinate.
    unit = qmc.Halton(d=2, scramble=True, seed=0).random(32)
    for trial, u in zip(trials[:32], unit, strict=True):
        lr = trial["optimizer.lr"]
        assert 1e-4 <= lr <= 1e-1
        assert math.isclose(math.log(lr / 1e-4) / math.log(1e3), u[0], abs_tol=1e-9)
        assert trial["optimizer.name"] == ("adamw" if u[1] < 0.5 else "lion")


def test_identity_follows_the_spec_and_the_config_file(tmp_path: Path) -> None:
    a = SweepSpec.create(workload="teacher", axes={"optimizer.lr": [1e-3, 1e-2]})
    same = SweepSpec.create(workload="teacher", axes={"optimizer.lr": [1e-3, 1e-2]})
    other = SweepSpec.create(workload="teacher", axes={"optimizer.lr": [1e-3, 3e-2]})
    assert a.identity() == same.identity() != other.identity()
    file = tmp_path / "base.toml"
    file.write_text("steps = 50\n")
    with_file = SweepSpec.create(workload="teacher", config_file=str(file))
    before = with_file.identity()
    file.write_text("steps = 60\n")
    assert with_file.identity() != before


# ---------------------------------------------------------------- running

# Long enough (no stop at target) that a kill can land mid-trial after a checkpoint;
# one torch thread everywhere so every executor computes bit-identical numbers.
BASE = [
    "steps=200",
    "train.stop_at_target=false",
    "train.eval_every=20",
    'train.monitor="off"',
    "train.threads=1",
]


def _spec(name: str = "s") -> SweepSpec:
    return SweepSpec.create(
        workload="teacher",
        axes={"optimizer.lr": [1e-3, 1e-2]},
        seeds=2,
        tiny=True,
        assignments=BASE,
        name=name,
    )


def _finals(store_path: Path, sweep_id: str) -> dict[int, tuple]:
    with Store(store_path) as store:
        out = {}
        for trial in store.trials(sweep_id):
            result = store.get_run(trial.run_id).result
            out[trial.trial_index] = (trial.status, result["step"], result["final_metrics"])
        return out


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("local") / "wdlab.db"
    summary = run_sweep(_spec(), path, workers=2, progress=False)
    return path, summary.sweep_id


def test_local_pool_runs_every_trial_into_the_store(local_sweep: tuple[Path, str]) -> None:
    path, sweep_id = local_sweep
    with Store(path) as store:
        trials = store.trials(sweep_id)
        runs = store.list_runs(sweep_id=sweep_id)
        assert [t.status for t in trials] == ["finished"] * 4
        assert sorted(r.id for r in runs) == sorted(t.run_id for t in trials)
        for trial in trials:
            run = store.get_run(trial.run_id)
            assert run.sweep_id == sweep_id and run.status == "finished"
            assert run.config["optimizer"]["lr"] == trial.params["optimizer.lr"]
            assert run.seed == trial.params["seed"]
            assert run.result["step"] == 200
        # One worker is a thread of this process, started before the spawned ones (which
        # import torch first), so it claims the first trial.
        pids = {int(t.worker.split(":")[1]) for t in trials}
        assert os.getpid() in pids

    again = run_sweep(_spec(), path, workers=2, progress=False)  # same command: resume
    assert again.sweep_id == sweep_id and not again.created
    assert again.counts["finished"] == 4
    with Store(path) as store:
        assert len(store.list_runs(sweep_id=sweep_id)) == 4  # nothing ran again
    assert [t.run_id for t in again.trials] == [t.run_id for t in trials]


def test_failing_and_diverging_trials_are_results(tmp_path: Path) -> None:
    spec = SweepSpec.create(
        workload="teacher",
        axes={"optimizer.eps": [1e-8, -1.0], "optimizer.lr": [3e-3, 1e6]},
        tiny=True,
        assignments=['train.monitor="off"', "train.threads=1"],
    )
    summary = run_sweep(spec, tmp_path / "wdlab.db", workers=1, progress=False)
    by_params = {(t.params["optimizer.eps"], t.params["optimizer.lr"]): t for t in summary.trials}
    assert by_params[(1e-8, 3e-3)].status == "finished"
    assert by_params[(1e-8, 3e-3)].reached is True
    diverged = by_params[(1e-8, 1e6)]
    assert diverged.status == "diverged" and diverged.run_id is not None
    assert "lower --lr" in diverged.error
    for lr in (3e-3, 1e6):
        failed = by_params[(-1.0, lr)]
        assert failed.status == "failed" and "eps" in failed.error and "\n" not in failed.error
    assert summary.counts == {"pending": 0, "running": 0, "finished": 1, "diverged": 1, "failed": 2}


_CHILD = """
import sys
from pathlib import Path
from wdlab.sweep import SweepSpec, run_sweep
spec = SweepSpec.model_validate_json(sys.argv[1])
run_sweep(spec, Path(sys.argv[2]), workers=1, progress=False)
"""


def test_sigkill_then_rerun_loses_and_repeats_nothing(
    tmp_path: Path, local_sweep: tuple[Path, str]
) -> None:
    path = tmp_path / "wdlab.db"
    spec = _spec()
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CHILD), spec.model_dump_json(), str(path)]
    )
    in_flight = None
    try:
        deadline = time.monotonic() + 120
        while in_flight is None and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            if not path.exists():
                continue
            with Store(path) as store:
                sweeps = store.list_sweeps()
                if not sweeps:
                    continue
                trials = store.trials(sweeps[0].id)
            finished = [t for t in trials if t.status == "finished"]
            running = [t for t in trials if t.status == "running" and t.run_id]
            if finished and running:
                checkpoint = runs_root_for(path) / running[0].run_id / "last.pt"
                if checkpoint.is_file():
                    in_flight = running[0]
                    before = {t.trial_index: t.run_id for t in finished}
                    os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert in_flight is not None, "the sweep ended before a trial was caught in flight"

    summary = run_sweep(spec, path, workers=1, progress=False)
    assert not summary.created and summary.counts["finished"] == 4
    after = {t.index: t.run_id for t in summary.trials}
    assert all(after[i] == rid for i, rid in before.items())  # finished ones kept their runs
    assert after[in_flight.trial_index] == in_flight.run_id  # resumed from its checkpoint
    with Store(path) as store:
        names = [r.name for r in store.list_runs(sweep_id=summary.sweep_id)]
    assert sorted(names) == sorted(f"s-t{i}" for i in range(4))  # one run per trial

    # The resumed run ends exactly where the uninterrupted sweep's ended.
    assert _finals(path, summary.sweep_id) == _finals(*local_sweep)


@pytest.mark.slow
def test_ray_gives_the_local_pool_results(tmp_path: Path, local_sweep: tuple[Path, str]) -> None:
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install wdlab[ray])")
    try:
        summary = run_sweep(
            _spec(), tmp_path / "wdlab.db", workers=2, backend="ray", progress=False
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert summary.counts["finished"] == 4
    assert _finals(tmp_path / "wdlab.db", summary.sweep_id) == _finals(*local_sweep)


def test_trial_config_applies_dotted_params() -> None:
    from wdlab.config import build_config

    base = build_config("teacher", tiny=True).to_dict()
    config = trial_config(base, {"optimizer.lr": 0.5, "seed": 7, "model.width": 32}, "x-t0")
    assert (config.optimizer.lr, config.seed, config.model["width"], config.name) == (
        0.5,
        7,
        32,
        "x-t0",
    )
    assert np.isclose(base["optimizer"]["lr"], 3e-3)  # the base is not modified


def test_cli_arguments_build_the_spec() -> None:
    import argparse

    from wdlab.sweep import add_arguments, spec_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = "teacher --optimizer adamw,lion --lr 1e-4:1e-1:7 --wd 0,0.01,0.1 --seeds 3 "
    argv += "--grid model.width=32,64 --steps 50 --set train.clip=1.0"
    spec = spec_from_args(parser.parse_args(argv.split()))
    assert list(spec.axes) == [
        "optimizer.name",
        "optimizer.lr",
        "optimizer.weight_decay",
        "model.width",
    ]
    assert spec.assignments == ["steps=50", "train.clip=1.0"]
    assert len(spec.trials()) == 2 * 7 * 3 * 2 * 3
    with pytest.raises(ConfigError, match="^--seeds"):
        spec_from_args(parser.parse_args(["teacher", "--seeds", "0:3"]))


def test_seeds_flag_is_a_count_a_list_or_one_listed_seed() -> None:
    import argparse

    from wdlab.sweep import add_arguments, spec_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def seeds(text: str) -> list[int]:
        spec = spec_from_args(parser.parse_args(["teacher", "--seeds", text]))
        return sorted({t["seed"] for t in spec.trials()})

    assert seeds("3") == [0, 1, 2]
    assert seeds("0,5,7") == [0, 5, 7]
    assert seeds("5,") == [5]  # one seed other than 0
    assert seeds("1") == [0]
    with pytest.raises(ConfigError, match="^--seeds"):
        seeds("5,,")


def test_recovery_requeues_only_dead_owners(tmp_path: Path) -> None:
    import socket

    from wdlab.sweep import recover_trials

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid is now free: a dead owner
    host = socket.gethostname()
    owners = [f"{host}:{gone.pid}:a", f"{host}:{os.getpid()}:b", "elsewhere:1:c"]
    with Store(tmp_path / "wdlab.db") as store:
        sweep = store.create_sweep(spec={}, trials=[{"i": i} for i in range(3)])
        for owner in owners:
            store.claim_trial(sweep, owner)
        assert recover_trials(store, sweep) == [0]
        assert [t.status for t in store.trials(sweep)] == ["pending", "running", "running"]
        # any owner, on any host, loses its trial once its heartbeat is stale
        assert recover_trials(store, sweep, stale_seconds=0.0) == [1, 2]


def test_optimizer_axis_drops_the_recipes_adamw_settings() -> None:
    from wdlab.config import build_config
    from wdlab.sweep import trial_config

    base = build_config("teacher").to_dict()
    assert "betas" in base["optimizer"]
    config = trial_config(base, {"optimizer.name": "sgdw", "optimizer.lr": 0.1}, "t")
    assert "betas" not in config.optimizer.hyperparameters()
    mine = build_config("teacher", assignments=["optimizer.betas=[0.5, 0.6]"]).to_dict()
    config = trial_config(mine, {"optimizer.name": "lion"}, "t")
    assert config.optimizer.hyperparameters()["betas"] == (0.5, 0.6)  # the user's stay
