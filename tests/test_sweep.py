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
    TRIAL_CHECKPOINT_SECONDS,
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

# Long enough (no stop at target) that a kill can land mid-trial after a checkpoint (a
# checkpoint every 20 steps: a sweep's own cadence, 30 s, would see none in these trials);
# one torch thread everywhere so every executor computes bit-identical numbers.
BASE = [
    "steps=200",
    "train.stop_at_target=false",
    "train.eval_every=20",
    "train.checkpoint_every=20",
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
        # Every trial trained in a worker process, none in this one (no torch threads
        # here while the interpreter may exit: that was Ctrl-C's `terminate called`).
        pids = {int(t.worker.split(":")[1]) for t in trials}
        assert os.getpid() not in pids and 1 <= len(pids) <= 2
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:  # each worker trained on a core of its own (pinned until its next job)
        masks = [os.sched_getaffinity(pid) for pid in pids]
        assert all(len(m) == 1 and m <= set(cpus) for m in masks)
        assert len(set.union(*masks)) == len(masks)

    again = run_sweep(_spec(), path, workers=2, progress=False)  # same command: resume
    assert again.sweep_id == sweep_id and not again.created
    assert again.counts["finished"] == 4
    with Store(path) as store:
        assert len(store.list_runs(sweep_id=sweep_id)) == 4  # nothing ran again
    assert [t.run_id for t in again.trials] == [t.run_id for t in trials]


def test_worker_cpus_are_disjoint_and_only_where_the_workers_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from wdlab.sweep.executors import worker_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5, 6, 9})
    assert worker_cpus(2, 1) == [(3,), (5,)]
    assert worker_cpus(2, 2) == [(3, 5), (6, 9)]
    assert worker_cpus(4, 1) == [(3,), (5,), (6,), (9,)]
    assert worker_cpus(3, 2) == [None, None, None]  # 6 threads on 4 CPUs: the OS places them
    assert worker_cpus(1, 4) == [None]  # one worker keeps every CPU


def test_ray_tasks_get_cores_only_on_a_one_node_ray_of_this_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from wdlab.sweep.executors import ray_worker_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})

    def fake_ray(nodes: list[tuple[str, bool]], mine: str) -> SimpleNamespace:
        context = SimpleNamespace(get_node_id=lambda: mine)
        return SimpleNamespace(
            nodes=lambda: [{"NodeID": n, "Alive": alive} for n, alive in nodes],
            get_runtime_context=lambda: context,
        )

    assert ray_worker_cpus(fake_ray([("a", True)], "a"), 2) == [(0,), (1,)]
    assert ray_worker_cpus(fake_ray([("a", True), ("b", False)], "a"), 2) == [(0,), (1,)]
    assert ray_worker_cpus(fake_ray([("a", True), ("b", True)], "a"), 2) == [None, None]
    assert ray_worker_cpus(fake_ray([("b", True)], "a"), 2) == [None, None]  # not our node


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


# ---------------------------------------------------------------- size cap, order, threads


def test_size_counts_without_generating() -> None:
    specs = [
        SweepSpec.create(workload="teacher", axes={"model.width": parse_axis("1:4:20")}),
        SweepSpec.create(
            workload="teacher",
            axes={"optimizer.lr": parse_axis("1e-4:1e-1:7"), "optimizer.name": ["adamw", "sgdw"]},
            seeds=[0, 5, 7],
        ),
        SweepSpec.create(
            workload="teacher",
            axes={"optimizer.lr": parse_axis("1e-4:1e-1")},
            sample="halton",
            n_trials=5,
            seeds=2,
        ),
    ]
    for spec in specs:
        assert spec.size() == len(spec.trials())
    assert specs[0].size() == 4  # 20 integer points round to 1, 2, 3, 4


def test_a_million_trials_is_refused_naming_the_cap_and_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wdlab.sweep import MAX_TRIALS

    spec = SweepSpec.create(
        workload="teacher", axes={"optimizer.lr": parse_axis("1e-4:1e-1:1000")}, seeds=1000
    )
    assert spec.size() == 10**6
    path = tmp_path / "sub" / "wdlab.db"
    with pytest.raises(ConfigError) as info:
        run_sweep(spec, path, progress=False)
    message = str(info.value)
    assert "1,000,000" in message and f"{MAX_TRIALS:,}" in message
    assert "--max-trials 1000000" in message and "\n" not in message
    assert not path.parent.exists()  # refused before anything was created
    spec.check_size(10**6)  # the override lets it through

    path = tmp_path / "wdlab.db"  # the CLI refuses a --store whose directory is missing
    argv = ["sweep", "teacher", "--lr", "1e-4:1e-1:1000", "--seeds", "1000", "--store", str(path)]
    assert _cli(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--max-trials" in lines[0] and "10,000" in lines[0]
    assert _cli([*argv, "--max-trials", "0"]) == 2
    assert "--max-trials must be an integer >= 1" in capsys.readouterr().err
    assert not path.exists()


def _cli(argv: list[str]) -> int:
    """`wdlab ARGV` in this process: its exit code."""
    from wdlab.cli import main

    try:
        return main(argv)
    except SystemExit as exit_info:
        return int(exit_info.code or 0)


def test_claims_go_longest_first(tmp_path: Path) -> None:
    from wdlab.sweep import longest_first

    base = {"steps": 100, "model": {"width": 32, "depth": 2}, "data": {"batch_size": 8}}
    trials = {
        0: {"optimizer.lr": 1e-3},
        1: {"steps": 400},
        2: {"model.width": 64},
        3: {"data.batch_size": 4},
        4: {"optimizer.lr": 1e-2},
    }
    # costs: 0 and 4 equal (index order kept), 1 is 4x, 2 is 2x, 3 is 0.5x
    assert longest_first(base, trials) == [1, 2, 0, 4, 3]

    spec = SweepSpec.create(
        workload="teacher",
        axes={"steps": [20, 60, 40]},
        tiny=True,
        assignments=['train.monitor="off"', "train.stop_at_target=false"],
    )
    summary = run_sweep(spec, tmp_path / "wdlab.db", workers=1, progress=False)
    with Store(tmp_path / "wdlab.db") as store:
        runs = store.list_runs(sweep_id=summary.sweep_id)  # newest first
    assert [r.config["steps"] for r in reversed(runs)] == [60, 40, 20]


def test_claim_trial_follows_the_given_order(tmp_path: Path) -> None:
    with Store(tmp_path / "wdlab.db") as store:
        sweep = store.create_sweep(spec={}, trials=[{"i": i} for i in range(4)])
        order = [2, 0, 3]
        claimed = [store.claim_trial(sweep, "w", order=order).trial_index for _ in range(4)]
        assert claimed == [2, 0, 3, 1]  # unlisted ones last, by index
        assert store.claim_trial(sweep, "w", order=order) is None


def _params_of(store_path: Path, run_id: str) -> dict:
    import torch

    path = runs_root_for(store_path) / run_id / "last.pt"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return payload["model"]


def test_a_trial_gives_the_same_result_with_one_or_two_workers(tmp_path: Path) -> None:
    # digits is a workload whose CPU result changes with torch's thread count (1 vs 2
    # threads give different val_loss), so this would fail if a worker's thread count
    # came from --workers (cores // workers) as it once did.
    spec = SweepSpec.create(
        workload="digits",
        axes={"optimizer.lr": [3e-3, 1e-2]},
        tiny=True,
        assignments=['train.monitor="off"', "train.stop_at_target=false"],
    )
    paths = {n: tmp_path / f"w{n}" / "wdlab.db" for n in (1, 2)}
    for n, path in paths.items():
        run_sweep(spec, path, workers=n, progress=False)
    finals = {n: _finals(path, _sweep_id(path)) for n, path in paths.items()}
    assert finals[1] == finals[2] and len(finals[1]) == 2
    with Store(paths[1]) as one, Store(paths[2]) as two:
        pairs = zip(one.trials(_sweep_id(paths[1])), two.trials(_sweep_id(paths[2])), strict=True)
        for a, b in pairs:
            assert one.get_run(a.run_id).config["train"]["threads"] == 1  # recorded in the run
            pa, pb = _params_of(paths[1], a.run_id), _params_of(paths[2], b.run_id)
            assert pa.keys() == pb.keys()
            assert all(np.array_equal(pa[k].numpy(), pb[k].numpy()) for k in pa)


@pytest.mark.parametrize(
    ("assignments", "cadence"),
    [
        ([], (None, TRIAL_CHECKPOINT_SECONDS)),  # left open: on time, not every evaluation
        (["train.checkpoint_every=20"], (20, 60.0)),  # the user's, as given
        (["train.checkpoint_seconds=5"], (500, 5.0)),
        (["train.checkpoint_every=0", "train.checkpoint_seconds=0"], (None, None)),
    ],
)
def test_a_sweep_checkpoints_on_time_unless_its_cadence_is_given(
    tmp_path: Path, assignments: list[str], cadence: tuple
) -> None:
    from wdlab.sweep import find_or_create_sweep

    spec = SweepSpec.create(workload="teacher", axes={"optimizer.lr": [1e-3]}, tiny=True,
                            assignments=assignments)
    with Store(tmp_path / "wdlab.db") as store:
        sweep_id, _ = find_or_create_sweep(store, spec)
        train = store.get_sweep(sweep_id).spec["base_config"]["train"]
        trial = trial_config(store.get_sweep(sweep_id).spec["base_config"], {}, "x")
    assert (train["checkpoint_every"], train["checkpoint_seconds"]) == cadence
    assert (trial.train.checkpoint_every, trial.train.checkpoint_seconds) == cadence


def _sweep_id(path: Path) -> str:
    with Store(path) as store:
        return store.list_sweeps()[0].id


# ---------------------------------------------------------------- the resume command


@pytest.mark.parametrize(
    "values",
    [
        {"axes": {"optimizer.lr": parse_axis("1e-4:1e-1:7"), "model.width": [32, 64]}},
        {"axes": {"optimizer.name": ["adamw", "lion"]}, "seeds": [5]},
        {"axes": {"model.width": parse_axis("16:256:5")}, "seeds": 3, "tiny": True},
        {
            "axes": {"optimizer.lr": parse_axis("1e-4:1e-1"), "optimizer.weight_decay": [0, 0.1]},
            "sample": "halton",
            "n_trials": 6,
            "sample_seed": 2,
            "assignments": ["steps=50", 'train.monitor="off"'],
            "name": "my sweep",
        },
    ],
)
def test_the_resume_command_builds_the_same_sweep(values: dict) -> None:
    import argparse
    import shlex

    from wdlab.sweep import add_arguments, command_for, spec_from_args

    spec = SweepSpec.create(workload="teacher", **values)
    command = command_for(spec, store="dir with space/s.db", workers=2)
    assert command is not None
    argv = shlex.split(command)
    assert argv[:2] == ["wdlab", "sweep"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parser.add_argument("--store")
    args = parser.parse_args(argv[2:])
    assert spec_from_args(args).identity() == spec.identity()
    assert (args.store, args.workers) == ("dir with space/s.db", 2)


def test_no_resume_command_when_flags_cannot_say_it() -> None:
    from wdlab.sweep import command_for

    spec = SweepSpec.create(workload="teacher", axes={"model.act": ["a:b"]})
    assert command_for(spec, store="s.db") is None


# ---------------------------------------------------------------- processes and signals


def _wait_for_trials_in_flight(path: Path, child: subprocess.Popen, n: int) -> list:
    """Running trials with a run and a checkpoint, once `n` of them are (or [] on timeout)."""
    deadline = time.monotonic() + 180
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        if not path.exists():
            continue
        with Store(path) as store:
            sweeps = store.list_sweeps()
            if not sweeps:
                continue
            running = [
                t
                for t in store.trials(sweeps[0].id)
                if t.status == "running"
                and t.run_id
                and (runs_root_for(path) / t.run_id / "last.pt").is_file()
            ]
        if len(running) >= n:
            return running
    return []


def _gone(pid: int) -> bool:
    import socket

    from wdlab.sweep.worker import owner_dead

    return owner_dead(f"{socket.gethostname()}:{pid}")


def test_ctrl_c_on_two_workers_exits_130_with_the_command_that_resumes(
    tmp_path: Path, local_sweep: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "wdlab.db"
    argv = ["sweep", "teacher", "--lr", "1e-3,1e-2", "--seeds", "2", "--tiny", "--name", "s"]
    for item in BASE:
        argv += ["--set", item]
    argv += ["--workers", "2", "--quiet", "--store", str(path)]
    child = subprocess.Popen(
        [sys.executable, "-m", "wdlab.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        in_flight = _wait_for_trials_in_flight(path, child, 1)
        os.killpg(child.pid, signal.SIGINT)  # what Ctrl-C does: SIGINT to the whole group
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert in_flight, "the sweep ended before a trial was caught in flight"
    assert child.returncode == 130, err
    assert "Traceback" not in err and "terminate called" not in err
    command = [line for line in err.splitlines() if line.startswith("continue with: ")]
    assert len(command) == 1, err
    with Store(path) as store:
        sweep = store.list_sweeps()[0]
        trials = store.trials(sweep.id)
        assert sweep.status == "interrupted"
        assert not [t for t in trials if t.status == "running"]  # every one put back or ended
        assert [t for t in trials if t.status == "pending"], "nothing was left to resume"
        caught = store.get_run(in_flight[0].run_id)
        assert caught.status in ("interrupted", "finished")  # checkpointed, not killed

    import shlex

    resume = shlex.split(command[0].removeprefix("continue with: "))
    assert resume[:2] == ["wdlab", "sweep"]
    assert _cli(resume[1:]) == 0  # in this process: its warm worker pool resumes the sweep
    assert "resumed" in capsys.readouterr().out
    assert _finals(path, sweep.id) == _finals(*local_sweep)  # as if never interrupted
    with Store(path) as store:
        assert len(store.list_runs(sweep_id=sweep.id)) == 4  # one run per trial


_KILLED_PARENT = """
import sys
from pathlib import Path
from wdlab.sweep import SweepSpec, run_sweep
if __name__ == "__main__":
    spec = SweepSpec.model_validate_json(sys.argv[1])
    run_sweep(spec, Path(sys.argv[2]), workers=2, backend=sys.argv[3], progress=False)
"""


@pytest.mark.parametrize("backend", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_no_process_outlives_a_sigkilled_sweep(tmp_path: Path, backend: str) -> None:
    if backend == "ray":
        pytest.importorskip("ray", reason="ray is not installed (pip install wdlab[ray])")
    from wdlab.sweep.reaper import process_tree

    path = tmp_path / "wdlab.db"
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(_KILLED_PARENT))
    spec = SweepSpec.create(
        workload="teacher",
        axes={"optimizer.lr": [1e-3, 1e-2]},
        tiny=True,
        assignments=["steps=100000", *BASE[1:]],  # far longer than the test
        name="orphans",
    )
    child = subprocess.Popen(
        [sys.executable, str(script), spec.model_dump_json(), str(path), backend]
    )
    try:
        running = _wait_for_trials_in_flight(path, child, 2)
        assert len(running) == 2, "the two workers did not start training"
        workers = {int(t.worker.split(":")[1]) for t in running}
        tree = set(process_tree(child.pid))  # workers, and Ray's agents or the pool's tracker
        assert workers <= tree and child.pid not in workers
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        deadline = time.monotonic() + 30  # a bound only: without a fix, Ray's agents lived >60 s
        while not all(_gone(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in tree if not _gone(p)]
        assert not left, f"processes outlived their SIGKILLed sweep: {left}"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_the_terminal_table_prints_stored_strings_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setenv("COLUMNS", "300")  # no cell cut short

    from wdlab.sweep import SweepSummary, TrialResult, print_summary

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    trial = TrialResult(0, {"model.act": "[/]"}, "failed", error="bad [link=http://x]y[/link]")
    summary = SweepSummary("abc", "[bold]s[/bold]", {"failed": 1}, 1.0, [trial])
    out = Tty()
    print_summary(summary, out)  # markup would raise on "[/]" or turn into a hyperlink
    text = out.getvalue()
    assert "[bold]s[/bold]" in text and "[/]" in text and "[link=http://x]" in text


def test_importing_the_sweep_package_leaves_torch_out() -> None:
    # The CLI builds its parser from wdlab.sweep, and spawned workers import it before
    # anything else: it must stay torch-free.
    code = "import sys, wdlab.sweep, wdlab.sweep.worker; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_invalid_axis_creates_no_store(tmp_path: Path) -> None:
    """Every trial's config is validated before the store is opened: nothing on disk."""
    from wdlab.sweep import SweepSpec, run_sweep

    spec = SweepSpec(workload="teacher", axes={"optimizer.lr": [1e-3, -1.0]}, tiny=True)
    with pytest.raises(ConfigError, match="lr"):
        run_sweep(spec, tmp_path / "s.db", progress=False)
    assert list(tmp_path.iterdir()) == []
