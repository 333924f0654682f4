"""Faults: SIGKILL at seeded random steps, a kill between the final checkpoint and
`finished`, a run held by a live process, concurrent find-or-create of one sweep,
non-finite state, and tampered or corrupt checkpoints and stores.

The killed runs train in children forked from this process (torch is already imported,
so a child starts in milliseconds) and kill themselves with SIGKILL at a chosen step; the
final resume runs here. Every check compares against an uninterrupted run: equal
parameters and every metric row present and equal (`train_seconds`, a wall-clock reading,
is the one metric that differs between any two runs).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pickle
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from wdlab import checkpoint as checkpoint_io
from wdlab import train
from wdlab.config import build_config, validate
from wdlab.errors import CheckpointError, ConfigError, StoreError, WdlabError
from wdlab.store import RunBusyError, Store
from wdlab.store import schema as store_schema
from wdlab.workloads.teacher import Teacher

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork and /proc")

SMALL = ["model.width=8", "data.batch_size=8", "data.n_train=64", "data.n_val=32",
         "train.threads=1", "train.stop_at_target=false"]
CLOCK_METRICS = {"train_seconds"}
FORK = multiprocessing.get_context("fork")


@pytest.fixture(scope="module", autouse=True)
def _warm_imports():
    """Import what the first optimizer imports (torch._dynamo, seconds) before any fork, so
    that forked children start training at once."""
    import torch._dynamo  # noqa: F401


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tree(*assignments: str, steps: int) -> dict[str, Any]:
    return build_config("teacher", tiny=True, flags={"steps": steps},
                        assignments=[*SMALL, *assignments]).to_dict()


def _reference(tmp_path: Path, tree: dict[str, Any]) -> tuple[train.RunResult, dict, dict]:
    with Store(tmp_path / "ref.db") as store:
        result = train.run(validate(tree), store, tmp_path / "ref-runs")
        metrics = store.metrics(result.run_id)
    return result, metrics, _params(tmp_path / "ref-runs", result.run_id)


def _params(runs_root: Path, run_id: str) -> dict[str, torch.Tensor]:
    return torch.load(runs_root / run_id / "last.pt", weights_only=True)["model"]


def _without_clock(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in CLOCK_METRICS}


def _assert_same_run(got: tuple, expected: tuple) -> None:
    (result, metrics, params), (ref, ref_metrics, ref_params) = got, expected
    assert result.status == "finished" and result.step == ref.step
    assert (result.reached, result.steps_to_target) == (ref.reached, ref.steps_to_target)
    assert result.final_metrics == ref.final_metrics
    assert _without_clock(metrics) == _without_clock(ref_metrics)  # every row, every value
    assert sorted(s for s, _ in metrics["train_seconds"]) == sorted(
        s for s, _ in ref_metrics["train_seconds"])
    assert params.keys() == ref_params.keys()
    for key in ref_params:
        assert torch.equal(params[key], ref_params[key]), key


def _train_and_die(store_path: str, runs_root: str, tree: dict, kill_at: int | None,
                   resume_id: str | None, flush_seconds: float, die_on: str) -> None:
    """A forked child: train, and SIGKILL this process at the start of step `kill_at`
    (die_on='step') or when the run is about to be marked finished (die_on='finished')."""
    torch.set_num_threads(1)
    real_batch, real_update = Teacher.batch, Store.update_run

    def batch(self, step):
        if die_on == "step" and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_batch(self, step)

    def update_run(self, run_id, **kwargs):
        if die_on == "finished" and kwargs.get("status") == "finished":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_update(self, run_id, **kwargs)

    Teacher.batch, Store.update_run = batch, update_run
    with Store(store_path, flush_seconds=flush_seconds) as store:
        train.run(validate(tree), store, Path(runs_root), resume_id=resume_id)


def _killed_child(db: Path, runs: Path, tree: dict, kill_at: int | None, resume_id: str | None,
                  flush_seconds: float = 2.0, die_on: str = "step") -> int:
    child = FORK.Process(target=_train_and_die, args=(
        str(db), str(runs), tree, kill_at, resume_id, flush_seconds, die_on))
    child.start()
    child.join(120)
    return child.exitcode


def _kill_resume_compare(tmp_path: Path, tree: dict, kills: list[int], flush_seconds: float):
    """Kill at each step of `kills` in turn (each child resumes the last), then resume to the
    end here; compare with an uninterrupted run."""
    db, runs = tmp_path / "s.db", tmp_path / "wdlab-runs"
    run_id = None
    for kill_at in kills:
        assert _killed_child(db, runs, tree, kill_at, run_id, flush_seconds) == -signal.SIGKILL
        with Store(db) as store:
            record = store.list_runs()[0]
        run_id = record.id
        assert record.status == "interrupted"  # its pid is dead: not `running` for ever
        assert record.resume_hint == f"wdlab run --resume {run_id} --store {db}"
    with Store(db) as store:
        rid, config = train.resume_config(store, run_id)
        result = train.run(config, store, runs, resume_id=rid)
        got = (result, store.metrics(rid), _params(runs, rid))
        assert store.get_run(rid).status == "finished" and store.get_run(rid).owner is None
    assert not list(runs.glob(f"{rid}/.*.tmp"))
    _assert_same_run(got, _reference(tmp_path, tree))


def test_sigkill_at_random_steps_keeps_every_metric_row(tmp_path: Path) -> None:
    """Checkpoints every 7 steps, metrics flushed at every call: the killed process has
    written rows past its last checkpoint, which the resumed run must replace exactly."""
    rng = random.Random(15)
    kills = sorted(rng.sample(range(1, 120), 3))
    tree = _tree("train.checkpoint_every=7", "train.checkpoint_seconds=0",
                 "train.monitor=light", "train.eval_every=10", steps=120)
    _kill_resume_compare(tmp_path, tree, kills, flush_seconds=0.0)


def test_sigkill_with_default_settings_resumes_exactly(tmp_path: Path) -> None:
    """Default checkpointing (500 steps / 60 s) and default metric buffering: one kill
    before the first checkpoint (the resume starts over), one after each of the two."""
    tree = _tree(steps=1200)
    defaults = validate(tree).train
    assert (defaults.checkpoint_every, defaults.checkpoint_seconds) == (500, 60.0)
    assert defaults.monitor == "light"
    rng = random.Random(1015)
    kills = [rng.randrange(1, 500), rng.randrange(501, 1000), rng.randrange(1001, 1200)]
    _kill_resume_compare(tmp_path, tree, kills, flush_seconds=2.0)


def test_sigkill_with_time_based_checkpoints(tmp_path: Path) -> None:
    """Checkpoints by wall time only, so their steps are whatever the clock gave: the
    resumed run must not depend on where they fell."""
    tree = _tree("train.checkpoint_every=0", "train.checkpoint_seconds=0.01",
                 "train.monitor=off", steps=150)
    rng = random.Random(7)
    _kill_resume_compare(tmp_path, tree, sorted(rng.sample(range(20, 150), 2)), flush_seconds=0.0)


def test_checkpoint_is_the_commit_point(tmp_path: Path, monkeypatch) -> None:
    """When a checkpoint file is written, another connection already sees every metric row
    logged up to that step (not only what the buffer happened to flush)."""
    db = tmp_path / "s.db"
    seen: list[tuple[int, int, int]] = []
    real_save = checkpoint_io.save

    def save(path, payload):
        raw = sqlite3.connect(db)
        try:
            count, last = raw.execute(
                "SELECT COUNT(*), MAX(step) FROM metrics WHERE name = 'train_loss'").fetchone()
        finally:
            raw.close()
        seen.append((payload["step"], count, last))
        real_save(path, payload)

    monkeypatch.setattr(checkpoint_io, "save", save)
    tree = _tree("train.checkpoint_every=10", "train.monitor=off", steps=40)
    with Store(db, flush_rows=10**6, flush_seconds=1e9) as store:  # flushed only when asked
        train.run(validate(tree), store, tmp_path / "runs")
    assert seen == [(s, s, s) for s in (10, 20, 30, 40)]


def test_kill_after_final_checkpoint_does_not_train_past_the_target(tmp_path: Path) -> None:
    db, runs = tmp_path / "s.db", tmp_path / "wdlab-runs"
    tree = build_config("teacher", tiny=True, assignments=["train.monitor=off", "train.threads=1",
                                                            "train.checkpoint_every=20"]).to_dict()
    reference = _reference(tmp_path, tree)
    assert reference[0].reached and reference[0].step < tree["steps"]  # stopped at its target
    assert _killed_child(db, runs, tree, None, None, die_on="finished") == -signal.SIGKILL
    with Store(db) as store:
        record = store.list_runs()[0]
        assert record.status == "interrupted"
        ckpt = torch.load(runs / record.id / "last.pt", weights_only=True)
        assert ckpt["step"] == reference[0].step and ckpt["progress"]["finished"] is True
        rid, config = train.resume_config(store, record.id)
        result = train.run(config, store, runs, resume_id=rid)
        got = (result, store.metrics(rid), _params(runs, rid))
        assert store.get_run(rid).status == "finished"
    _assert_same_run(got, reference)


def _hold(store_path: str, runs_root: str, tree: dict, ready: Any) -> None:
    """A forked child that trains until step 5, says so, and then waits to be killed."""
    torch.set_num_threads(1)
    real_batch = Teacher.batch

    def batch(self, step):
        if step == 5:
            ready.set()
            time.sleep(600)
        return real_batch(self, step)

    Teacher.batch = batch
    with Store(store_path) as store:
        train.run(validate(tree), store, Path(runs_root))


def test_resume_of_a_run_a_live_process_holds_is_refused(tmp_path: Path, capsys) -> None:
    db, runs = tmp_path / "s.db", tmp_path / "wdlab-runs"
    tree = _tree("train.monitor=off", "train.checkpoint_every=2", steps=30)
    ready = FORK.Event()
    child = FORK.Process(target=_hold, args=(str(db), str(runs), tree, ready))
    child.start()
    try:
        assert ready.wait(120)
        with Store(db) as store:
            record = store.list_runs()[0]
            assert record.status == "running" and record.resume_hint is None
            with pytest.raises(WdlabError, match="being trained by another process"):
                train.resume_config(store, record.id)
            with pytest.raises(RunBusyError, match=f"pid {child.pid} "):
                train.run(validate(record.config), store, runs, resume_id=record.id)
            assert store.get_run(record.id).owner == record.owner  # the holder keeps it
        code, err = _cli(capsys, "run", "--resume", record.id, "--store", str(db), "--quiet")
        assert code == 2 and "being trained by another process" in err
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    with Store(db) as store:
        assert store.get_run(record.id).status == "interrupted"
        rid, config = train.resume_config(store, record.id)
        assert train.run(config, store, runs, resume_id=rid).status == "finished"


# ------------------------------------------------------------------ sweeps


def _find_or_create(store_path: str, spec_json: str, barrier: Any, out: Any) -> None:
    from wdlab.sweep import SweepSpec, find_or_create_sweep

    spec = SweepSpec.model_validate_json(spec_json)
    with Store(store_path) as store:
        barrier.wait(60)
        out.put(find_or_create_sweep(store, spec))


def test_concurrent_find_or_create_makes_one_sweep_and_more_seeds_extend_it(
    tmp_path: Path,
) -> None:
    from wdlab.sweep import SweepSpec, find_or_create_sweep

    db = tmp_path / "s.db"
    Store(db).close()
    spec = SweepSpec.create(workload="teacher", axes={"optimizer.lr": [1e-3, 1e-2, 3e-2]},
                            seeds=2, tiny=True)
    n = 6
    barrier, out = FORK.Barrier(n), FORK.Queue()
    procs = [FORK.Process(target=_find_or_create, args=(str(db), spec.model_dump_json(),
                                                       barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    answers = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len({sweep_id for sweep_id, _ in answers}) == 1
    assert sorted(created for _, created in answers) == [False] * (n - 1) + [True]
    sweep_id = answers[0][0]
    with Store(db) as store:
        assert [s.id for s in store.list_sweeps()] == [sweep_id]
        assert [t.params for t in store.trials(sweep_id)] == spec.trials()
        # Same spec, more seeds: the same sweep, extended by the new seeds' trials only.
        more = spec.model_copy(update={"seeds": [0, 1, 2, 5]})
        assert find_or_create_sweep(store, more) == (sweep_id, False)
        trials = store.trials(sweep_id)
        assert [t.params for t in trials] == more.trials()
        assert store.get_sweep(sweep_id).spec["spec"]["seeds"] == [0, 1, 2, 5]
        assert find_or_create_sweep(store, spec) == (sweep_id, False)  # fewer seeds: as is
        assert len(store.trials(sweep_id)) == len(trials)


def _sweep_command(argv: list[str], barrier: Any, out: Any) -> None:
    """A forked child that is one `wdlab sweep ...` command (the CLI's own main)."""
    from wdlab.cli import main

    torch.set_num_threads(1)
    barrier.wait(60)
    try:
        out.put(main(argv))
    except SystemExit as exc:
        out.put(exc.code)


def test_two_identical_sweep_commands_share_one_sweep(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    # One torch thread: a forked child must not start an OpenMP pool its parent had used.
    argv = ["sweep", "teacher", "--tiny", "--lr", "1e-3,3e-3,1e-2", "--steps", "20", "--set",
            "train.monitor=off", "--set", "model.width=8", "--set", "train.threads=1",
            "--quiet", "--store", str(db)]
    barrier, out = FORK.Barrier(2), FORK.Queue()
    procs = [FORK.Process(target=_sweep_command, args=(argv, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    codes = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert codes == [0, 0]
    with Store(db) as store:
        sweeps = store.list_sweeps()
        assert len(sweeps) == 1
        trials = store.trials(sweeps[0].id)
        runs = store.list_runs(sweep_id=sweeps[0].id)
    assert [t.status for t in trials] == ["finished"] * 3
    assert sorted(r.id for r in runs) == sorted(t.run_id for t in trials)  # each trained once


# ------------------------------------------------------------------ non-finite state


def _poison_on_step(monkeypatch, poison_at: int) -> None:
    """The optimizer's `poison_at`-th step (1-based) leaves a weight at inf, while that step's
    loss and gradient norm were finite (what the loop checks before stepping)."""
    real_create = train.create_optimizer

    def create(*args, **kwargs):
        optimizer = real_create(*args, **kwargs)
        real_step, calls = optimizer.step, [0]

        def step(*a, **k):
            out = real_step(*a, **k)
            calls[0] += 1
            if calls[0] == poison_at:
                with torch.no_grad():
                    optimizer.param_groups[0]["params"][0].view(-1)[0] = float("inf")
            return out

        optimizer.step = step
        return optimizer

    monkeypatch.setattr(train, "create_optimizer", create)


@pytest.mark.parametrize(("poison_at", "every", "good_step"), [(10, 5, 5), (12, None, None)])
def test_non_finite_state_is_never_the_good_checkpoint(
    tmp_path: Path, monkeypatch, poison_at: int, every: int | None, good_step: int | None
) -> None:
    _poison_on_step(monkeypatch, poison_at)
    tree = _tree("train.monitor=off", f"train.checkpoint_every={every or 0}",
                 "train.checkpoint_seconds=0", steps=12)
    with Store(tmp_path / "s.db") as store:
        result = train.run(validate(tree), store, tmp_path / "runs")
        record = store.get_run(result.run_id)
    assert result.status == record.status == "diverged"
    assert "non-finite" in record.message and "\n" not in record.message
    path = tmp_path / "runs" / result.run_id / "last.pt"
    if good_step is None:
        assert not path.exists()  # the final state was the bad one: nothing written
    else:
        payload = torch.load(path, weights_only=True)
        assert payload["step"] == good_step
        assert all(torch.isfinite(v).all() for v in payload["model"].values())


# ------------------------------------------------------------------ bad checkpoints


def _cli(capsys, *args: str) -> tuple[int, str]:
    """Run the CLI in this process; (exit code, stderr)."""
    from wdlab.cli import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _assert_one_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "weights_only" not in err, err
    for needle in needles:
        assert needle in err, err


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _failed_run(tmp_path: Path, monkeypatch) -> tuple[Path, str, Path]:
    """A run that failed at step 13 with its checkpoint at step 10: one `--resume` away."""
    db, runs = tmp_path / "s.db", tmp_path / "wdlab-runs"
    tree = _tree("train.monitor=off", "train.checkpoint_every=5", steps=30)
    real_batch = Teacher.batch

    def batch(self, step):
        if step == 12:
            raise RuntimeError("simulated crash")
        return real_batch(self, step)

    monkeypatch.setattr(Teacher, "batch", batch)
    with Store(db) as store, pytest.raises(RuntimeError):
        train.run(validate(tree), store, runs)
    monkeypatch.setattr(Teacher, "batch", real_batch)
    with Store(db) as store:
        run_id = store.list_runs()[0].id
    return db, run_id, runs / run_id / "last.pt"


def _tampered(good: dict, **changes: Any) -> dict:
    out = {**good, **changes}
    return out


def test_bad_checkpoints_are_refused_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    db, run_id, path = _failed_run(tmp_path, monkeypatch)
    good_bytes = path.read_bytes()
    good = torch.load(path, weights_only=True)
    evil = _Evil()
    evil.target = str(tmp_path / "pwned")
    nan_model = {k: torch.full_like(v, float("nan")) for k, v in good["model"].items()}
    wrong_shape = {k: torch.zeros(3, 3) for k in good["model"]}

    def torch_bytes(obj: Any) -> bytes:
        tmp = tmp_path / "x.pt"
        torch.save(obj, tmp)
        return tmp.read_bytes()

    cases = {
        "empty": (b"", "is empty"),
        "truncated": (good_bytes[: len(good_bytes) // 2], "truncated"),
        "random bytes": (bytes(random.Random(0).randrange(256) for _ in range(4096)),
                         "truncated or not a checkpoint"),
        "malicious pickle": (torch_bytes({"format": 2, "x": evil}), "never unpickles code"),
        "plain pickle": (pickle.dumps({"format": 2, "run_id": run_id}), "checkpoint"),
        "not a dict": (torch_bytes([1, 2, 3]), "not a wdlab checkpoint"),
        "another run's id": (torch_bytes(_tampered(good, run_id="deadbeef")),
                             "belongs to run 'deadbeef'"),
        "step past the budget": (torch_bytes(_tampered(good, step=10**6)), "past the run's budget"),
        "negative step": (torch_bytes(_tampered(good, step=-1)), "impossible step"),
        "NaN weights": (torch_bytes(_tampered(good, model=nan_model)), "non-finite"),
        "another model": (torch_bytes(_tampered(good, model=wrong_shape)), "does not fit"),
        "bad rng": (torch_bytes(_tampered(good, torch_rng=torch.zeros(3))), "RNG"),
        "bad optimizer": (torch_bytes(_tampered(good, optimizer={"state": {}, "param_groups": []})),
                          "does not fit this run's optimizer"),
    }
    with Store(db) as store:
        before = (store.get_run(run_id), store.metrics(run_id))
    for name, (data, needle) in cases.items():
        path.write_bytes(data)
        code, err = _cli(capsys, "run", "--resume", run_id, "--store", str(db), "--quiet")
        assert code == 2, (name, err)
        _assert_one_line(err, str(path), needle, f"--resume {run_id}")
        assert path.read_bytes() == data, name  # left as it was, for the user to look at
    assert not (tmp_path / "pwned").exists()
    assert not list(path.parent.glob(".*.tmp"))
    with Store(db) as store:  # nothing in the store changed either
        after = (store.get_run(run_id), store.metrics(run_id))
    assert after == before and after[0].status == "failed"
    # As the message says: moved aside, the run restarts from step 0 (and ends as it would).
    path.unlink()
    stale = path.parent / ".last.pt.dead0001.tmp"
    stale.write_bytes(b"")  # what a writer killed mid-write leaves
    with Store(db) as store:
        rid, config = train.resume_config(store, run_id)
        result = train.run(config, store, path.parent.parent, resume_id=rid)
    assert result.status == "finished" and result.step == 30
    assert not stale.exists()


def test_malicious_checkpoint_through_the_real_cli(tmp_path: Path, monkeypatch) -> None:
    db, run_id, path = _failed_run(tmp_path, monkeypatch)
    evil = _Evil()
    evil.target = str(tmp_path / "pwned")
    torch.save({"format": 2, "run_id": run_id, "payload": evil}, path)
    done = subprocess.run([sys.executable, "-m", "wdlab.cli", "run", "--resume", run_id,
                           "--store", str(db), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 2
    _assert_one_line(done.stderr, str(path), "never unpickles code")
    assert not (tmp_path / "pwned").exists()


def test_a_failed_checkpoint_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    def broken_save(obj, handle):
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    tree = _tree("train.monitor=off", "train.checkpoint_every=5", steps=10)
    with Store(tmp_path / "s.db") as store, pytest.raises(OSError, match="No space"):
        train.run(validate(tree), store, tmp_path / "runs")
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert list(run_dir.iterdir()) == []


# ------------------------------------------------------------------ bad stores and configs


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _store_with_runs(path: Path, n: int = 200) -> list[str]:
    with Store(path) as store:
        ids = [store.create_run(workload="teacher", config={"i": i, "pad": "x" * 200}, seed=i)
               for i in range(n)]
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()
    return ids


def _break_store(kind: str, path: Path) -> str:
    """Damage a store the way the fuzz audit did; the text the error must contain."""
    if kind == "random bytes":
        path.write_bytes(bytes(random.Random(1).randrange(256) for _ in range(8192)))
        return "not a wdlab store"
    ids = _store_with_runs(path)
    raw = sqlite3.connect(path)
    try:
        if kind == "non-integer schema_version":
            raw.execute("UPDATE meta SET value = 'two' WHERE key = 'schema_version'")
            raw.commit()
            return "not an integer"
        if kind == "non-JSON config":
            raw.execute("UPDATE runs SET config = '{not json' WHERE id = ?", (ids[-1],))
            raw.commit()
            return f"run {ids[-1]}"
        pages = [r[0] for r in raw.execute("SELECT pageno FROM dbstat WHERE name = 'runs'")]
    finally:
        raw.close()
    data = bytearray(path.read_bytes())
    page = pages[len(pages) // 2]
    data[(page - 1) * 4096 : page * 4096] = b"\xab" * 4096
    path.write_bytes(bytes(data))
    return ".recover"


@pytest.mark.parametrize("kind", ["random bytes", "non-integer schema_version",
                                  "non-JSON config", "corrupt pages"])
def test_damaged_stores_are_one_line_naming_the_store(tmp_path: Path, capsys, kind) -> None:
    path = tmp_path / "x.db"
    needle = _break_store(kind, path)
    digest = _digest(path)
    with pytest.raises(StoreError) as err, Store(path) as store:
        store.list_runs()
    assert str(path) in str(err.value) and needle in str(err.value)
    assert "\n" not in str(err.value)
    code, out = _cli(capsys, "runs", "--store", str(path))
    assert code == 2
    _assert_one_line(out, str(path), needle)
    assert _digest(path) == digest  # a failed command changed nothing


def test_read_only_open_never_creates_a_store(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "x.db"
    with pytest.raises(StoreError, match="no store at"):
        Store(missing, create=False)
    assert not (tmp_path / "no").exists()
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(StoreError, match="empty file"):
        Store.open_existing(empty)
    assert empty.read_bytes() == b""
    Store(tmp_path / "real.db").close()
    with Store.open_existing(tmp_path / "real.db") as store:
        assert store.list_runs() == []


def test_non_finite_results_are_stored_as_json_null(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with Store(db) as store:
        rid = store.create_run(workload="teacher", config={}, seed=0)
        store.update_run(rid, result={"final_metrics": {"val_loss": float("nan"),
                                                        "x": float("inf")}, "target": None})
        assert store.get_run(rid).result == {"final_metrics": {"val_loss": None, "x": None},
                                             "target": None}
    raw = sqlite3.connect(db)
    try:  # valid JSON for SQLite's own json functions
        got = raw.execute("SELECT json_extract(result, '$.final_metrics.val_loss'), "
                          "json_valid(result) FROM runs").fetchone()
    finally:
        raw.close()
    assert got == (None, 1)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"flags": {"target": float("nan")}}, "target"),
    ({"flags": {"optimizer.lr": float("inf")}}, "optimizer.lr"),
    ({"assignments": ["optimizer.betas=[0.9, nan]"]}, "optimizer.betas"),
    ({"flags": {"seed": 2**70}}, "seed"),
    ({"toml": "optimizer = 3\n"}, "optimizer"),
    ({"toml": "[train]\ncheckpoint_seconds = -1\n"}, "train.checkpoint_seconds"),
])
def test_bad_configs_are_one_line_naming_the_field(tmp_path: Path, kwargs, field) -> None:
    file = None
    if "toml" in kwargs:
        file = tmp_path / "c.toml"
        file.write_text(kwargs.pop("toml"))
    with pytest.raises(ConfigError) as err:
        build_config("teacher", tiny=True, file=file, **kwargs)
    message = str(err.value)
    assert f"config error: {field}:" in message and "\n" not in message
    assert err.value.field == field


def test_wave1_store_is_migrated_in_place(tmp_path: Path) -> None:
    """A store that wave 1 wrote (user_version 0, meta.schema_version 1), including two
    sweeps of one identity that its find-or-create race made, opens and is migrated."""
    db = tmp_path / "old.db"
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA journal_mode = WAL")
    for statement in store_schema._V1.split(";"):
        if statement.strip():
            raw.execute(statement)
    raw.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('created', 'x')")
    stamp = "2026-01-01T00:00:00.000000+00:00"
    raw.execute("INSERT INTO runs (id, name, workload, status, config, seed, created, updated, "
                "versions) VALUES ('abcd0001', 'old', 'teacher', 'running', '{}', 0, ?, ?, '{}')",
                (stamp, stamp))
    for sweep_id, created in (("0000aaaa", stamp), ("0000bbbb", stamp.replace("00.0", "01.0"))):
        raw.execute("INSERT INTO sweeps VALUES (?, ?, ?, ?, 'finished')",
                    (sweep_id, f"n-{sweep_id}", json.dumps({"identity": "same"}), created))
    raw.commit()
    raw.close()
    with Store(db) as store:
        record = store.get_run("abcd0001")
        assert record.status == "interrupted"  # `running` with nobody holding it
        assert {s.id: s.identity for s in store.list_sweeps()} == {
            "0000aaaa": "same", "0000bbbb": None}
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == 2
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)
        with pytest.raises(sqlite3.IntegrityError):  # one sweep per identity from now on
            raw.execute("UPDATE sweeps SET identity = 'same' WHERE id = '0000bbbb'")
    finally:
        raw.close()


def test_checkpoint_error_is_a_wdlab_error() -> None:
    assert issubclass(CheckpointError, WdlabError) and issubclass(StoreError, WdlabError)
    assert issubclass(RunBusyError, WdlabError)


def test_no_torch_traceback_text_in_checkpoint_errors(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(textwrap.dedent("not a zip").encode())
    with pytest.raises(CheckpointError) as err:
        checkpoint_io.read(path, "r1")
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
