"""Ray sweeps across machines: the driver is the store's one writer, workers never open it.

One real two-node cluster (ray.cluster_utils.Cluster, one CPU per node) serves the module;
its workers start in a directory where no store exists. The sweep is stopped with Ctrl-C,
its driver is SIGKILLed mid-sweep and run again, and a worker node is removed mid-trial:
every trial must end once,
with the metric rows, results and runs of an uninterrupted local-pool run of the same sweep.
The driver's bookkeeping and the workers' batching are checked without Ray, below.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from wdlab.errors import WdlabError
from wdlab.store import RunBusyError, Store
from wdlab.sweep import (
    SweepInterrupted,
    SweepSpec,
    find_or_create_sweep,
    run_sweep,
    validated_trials,
)
from wdlab.sweep.driver import Driver
from wdlab.sweep.reaper import process_tree

BASE = [
    "steps=240",
    "train.stop_at_target=false",
    "train.eval_every=20",
    "train.checkpoint_every=20",
    'train.monitor="off"',
    "train.threads=1",
]


def _spec() -> SweepSpec:
    return SweepSpec.create(
        workload="teacher",
        axes={"optimizer.lr": [1e-3, 3e-3, 1e-2]},
        seeds=2,
        tiny=True,
        assignments=BASE,
        name="c",
    )


def _rows(store_path: Path, sweep_id: str) -> dict[int, tuple[str, str, dict]]:
    """Per trial: its status, run name, and every metric row ((step, value) per name);
    train_seconds is a clock reading, so only its steps are compared."""
    out = {}
    with Store(store_path) as store:
        for trial in store.trials(sweep_id):
            run = store.get_run(trial.run_id)
            rows = store.metrics(trial.run_id)
            rows["train_seconds"] = [(step, 0.0) for step, _ in rows["train_seconds"]]
            out[trial.trial_index] = (trial.status, run.name, rows, run.result["final_metrics"])
    return out


# ---------------------------------------------------------------- the cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A head and one more node, one CPU each, started from an empty directory (the workers'
    working directory: no store there, and none may appear)."""
    pytest.importorskip("ray", reason="ray is not installed (pip install wdlab[ray])")
    import ray
    from ray.cluster_utils import Cluster

    workdir = tmp_path_factory.mktemp("workers-cwd")
    before = os.getcwd()
    os.chdir(workdir)
    try:
        nodes = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "include_dashboard": False,
                "_system_config": {"worker_niceness": 0},  # Ray's 15 starves them under load
            },
        )
        second = nodes.add_node(num_cpus=1)
    finally:
        os.chdir(before)
    try:
        yield nodes, second, workdir
    finally:
        if ray.is_initialized():
            ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from wdlab.sweep import shutdown_workers

    path = tmp_path_factory.mktemp("local") / "wdlab.db"
    summary = run_sweep(_spec(), path, workers=2, progress=False)
    shutdown_workers()  # their CPU is the cluster's now
    return _rows(path, summary.sweep_id)


_DRIVER = """
import sys
from pathlib import Path
from wdlab.sweep import SweepSpec, run_sweep
if __name__ == "__main__":
    spec = SweepSpec.model_validate_json(sys.argv[1])
    run_sweep(spec, Path("wdlab.db"), workers=2, backend="ray", address=sys.argv[2],
              checkpoint_dir=Path(sys.argv[3]), progress=False)
"""


def _in_flight(store_path: Path, checkpoints: Path, pids: set[int] | None = None) -> list:
    """Running trials with a checkpoint (on the processes `pids`, if given)."""
    if not store_path.exists():
        return []
    with Store(store_path) as store:
        sweeps = store.list_sweeps()
        trials = store.trials(sweeps[0].id) if sweeps else []
    return [
        t
        for t in trials
        if t.status == "running"
        and t.run_id
        and (checkpoints / t.run_id / "last.pt").is_file()
        and (pids is None or int(t.worker.split(":")[1]) in pids)
    ]


def _finished(store_path: Path) -> list:
    with Store(store_path) as store:
        return [t for t in store.trials(store.list_sweeps()[0].id) if t.status == "finished"]


def _raylet_pid(node: Any) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def test_a_killed_driver_and_a_lost_node_lose_and_repeat_nothing(
    tmp_path: Path, cluster: Any, local_reference: dict
) -> None:
    nodes, second, workdir = cluster
    store_dir, checkpoints = tmp_path / "driver", tmp_path / "shared-checkpoints"
    store_dir.mkdir()
    store_path = store_dir / "wdlab.db"
    ray_args = {
        "workers": 2,
        "backend": "ray",
        "address": nodes.address,
        "checkpoint_dir": checkpoints,
        "progress": False,
    }
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(_DRIVER))
    spec = _spec()

    # 0. Ctrl-C on a driver in this process: the trials in flight checkpoint and go back.
    def ctrl_c_once_in_flight() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if _in_flight(store_path, checkpoints):
                os.kill(os.getpid(), signal.SIGINT)  # run_sweep's handler: a clean stop
                return

    stopper = threading.Thread(target=ctrl_c_once_in_flight, daemon=True)
    stopper.start()
    with pytest.raises(SweepInterrupted):
        run_sweep(spec, store_path, **ray_args)
    stopper.join(5)
    with Store(store_path) as store:
        trials = store.trials(store.list_sweeps()[0].id)
        stopped = [t for t in trials if t.run_id and t.status == "pending"]
        assert stopped and not [t for t in trials if t.status == "running"]
        for trial in stopped:  # each stopped between steps with a checkpoint of its own
            step = store.get_run(trial.run_id).result["step"]
            assert 0 < step < 240 and (checkpoints / trial.run_id / "last.pt").is_file()
    interrupted = {t.trial_index: t.run_id for t in stopped}

    # 1. A driver in its own process, SIGKILLed once a trial has ended and one is in flight.
    child = subprocess.Popen(
        [sys.executable, str(script), spec.model_dump_json(), nodes.address, str(checkpoints)],
        cwd=store_dir,
    )
    killed_in_flight = None
    try:
        deadline = time.monotonic() + 180
        while killed_in_flight is None and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            running = _in_flight(store_path, checkpoints)
            if running and _finished(store_path):
                os.kill(child.pid, signal.SIGKILL)
                killed_in_flight = running[0]
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert killed_in_flight is not None, "the first driver ended before a trial was in flight"
    before = {t.trial_index: t.run_id for t in _finished(store_path)}

    # 2. The same sweep again, from this process; the second node is removed mid-trial.
    node_pids = {_raylet_pid(second)}
    removed: list = []

    def remove_second_node() -> None:
        deadline = time.monotonic() + 180
        while not removed and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = set(process_tree(_raylet_pid(second))) | node_pids
            running = _in_flight(store_path, checkpoints, pids)
            if running:
                nodes.remove_node(second, allow_graceful=False)
                removed.append(running[0])

    watcher = threading.Thread(target=remove_second_node, daemon=True)
    watcher.start()
    summary = run_sweep(spec, store_path, **ray_args)
    watcher.join(5)
    assert removed, "the sweep ended before a trial was caught on the second node"
    assert not summary.created and summary.counts["finished"] == 6

    # Nothing lost, nothing run twice: one run per trial, the finished ones kept, the
    # stopped, killed and lost ones resumed (same run, from its checkpoint), and every metric
    # row and result exactly those of an uninterrupted local-pool run.
    after = {t.index: t.run_id for t in summary.trials}
    assert all(after[i] == rid for i, rid in {**interrupted, **before}.items())
    assert after[killed_in_flight.trial_index] == killed_in_flight.run_id
    assert after[removed[0].trial_index] == removed[0].run_id
    with Store(store_path) as store:
        names = sorted(r.name for r in store.list_runs(sweep_id=summary.sweep_id))
    assert names == sorted(f"c-t{i}" for i in range(6))
    assert _rows(store_path, summary.sweep_id) == local_reference

    # The workers never touched a store: none appeared in their working directory, and the
    # checkpoints are in the shared directory, not beside the store.
    assert list(workdir.iterdir()) == []
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == sorted(after.values())
    assert not (store_dir / "wdlab-runs").exists()


# ---------------------------------------------------------------- the driver without Ray


@pytest.fixture()
def driver(tmp_path: Path) -> Driver:
    spec = SweepSpec.create(
        workload="teacher", axes={"optimizer.lr": [1e-3, 1e-2]}, tiny=True, name="d"
    )
    store = Store(tmp_path / "wdlab.db")
    sweep_id, _ = find_or_create_sweep(store, spec, validated_trials(spec))
    yield Driver(store, sweep_id, tmp_path / "runs")
    store.close()


def _run_kwargs() -> dict:
    return {"workload": "teacher", "config": {"steps": 1}, "seed": 0, "name": "d-t0"}


def test_the_driver_applies_each_workers_messages_in_their_order(driver: Driver) -> None:
    claim = ("claim", {"worker": "host:1:a", "order": []})
    create = ("create_run", {**_run_kwargs(), "trial": 0, "worker": "host:1:a"})
    # Sequence 1 arrives before 0: it waits for it, and the answers go to the right posts.
    replies = driver.handle([("w0", 1, [create], True)])
    assert replies == {}
    replies = driver.handle([("w0", 0, [claim], True)])
    trial, run_id = replies[("w0", 0)]["value"], replies[("w0", 1)]["value"]
    assert trial.trial_index == 0 and replies[("w0", 1)]["error"] is None
    rows = [("log_metrics", {"run_id": run_id, "step": s, "metrics": {"x": s / 2}}) for s in (1, 2)]
    driver.handle([("w0", 2, [*rows, ("flush", {})], True)])
    store = driver.store
    assert store.metrics(run_id) == {"x": [(1, 0.5), (2, 1.0)]}
    assert store.trials(driver.sweep_id)[0].run_id == run_id  # linked on creation


def test_errors_come_back_to_the_worker_by_class(driver: Driver) -> None:
    from wdlab.lease import current_owner
    from wdlab.sweep.remote import DriverChannel, RemoteSink

    run_id = driver.store.create_run(**_run_kwargs(), sweep_id=driver.sweep_id)
    driver.store.claim_run(run_id, current_owner())  # this live process trains it
    busy = ("claim_run", {"run_id": run_id, "owner": "host:1:1"})
    reply = driver.handle([("w0", 0, [busy], True)])[("w0", 0)]
    assert reply["error"][0] == "RunBusyError" and run_id in reply["error"][1]
    # An error in a batch that waits for no answer is raised at the worker's next call.
    bad = ("log_metrics", {"run_id": "nosuchrun", "step": 1, "metrics": {"x": 1.0}})
    assert driver.handle([("w0", 1, [bad], False)]) == {}
    reply = driver.handle([("w0", 2, [("flush", {})], True)])[("w0", 2)]
    assert reply["error"] is not None and "nosuchrun" in reply["error"][1]
    # On the worker's side the error is raised again as its own class.
    channel = DriverChannel(_FakeRay(driver), _Mailbox(), "w1")
    with pytest.raises(RunBusyError, match=run_id):
        RemoteSink(channel, 0, "host:1:a").claim_run(run_id, "host:1:1")


def test_a_lost_worker_gives_back_its_trial_and_lease_and_is_not_heard_again(
    driver: Driver,
) -> None:
    worker, owner = "otherhost:1:a", "otherhost:1:1"  # another host: only we can tell it died
    claim = ("claim", {"worker": worker, "order": []})
    create = ("create_run", {**_run_kwargs(), "trial": 0, "worker": worker})
    replies = driver.handle([("w0", 0, [claim, create], True)])
    run_id = replies[("w0", 0)]["value"]
    driver.handle([("w0", 1, [("claim_run", {"run_id": run_id, "owner": owner})], True)])
    assert driver.store.get_run(run_id).owner == owner

    assert driver.forget("w0") == [0]
    trial = driver.store.trials(driver.sweep_id)[0]
    assert (trial.status, trial.run_id) == ("pending", run_id)  # resumes that run
    assert driver.store.get_run(run_id).owner is None
    late = ("log_metrics", {"run_id": run_id, "step": 9, "metrics": {"x": 1.0}})
    reply = driver.handle([("w0", 2, [late, ("flush", {})], True)])[("w0", 2)]
    assert reply["error"] is not None and driver.store.metrics(run_id) == {}


# ---------------------------------------------------------------- the worker's batching


class _Remote:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def remote(self, *args: Any) -> Any:
        self.calls.append(args)
        return args


class _Mailbox:
    def __init__(self) -> None:
        self.post = _Remote([])


class _FakeRay:
    """Answers every waiting post at once, as a driver would."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def get(self, ref: Any) -> Any:
        token, seq, messages, wait = ref
        return {**self.driver.handle([ref])[(token, seq)], "stop": False}


def test_metric_rows_go_in_batches_and_flush_is_the_commit_point(driver: Driver) -> None:
    from wdlab.sweep.remote import BATCH_ROWS, DriverChannel, RemoteSink

    mailbox = _Mailbox()
    channel = DriverChannel(_FakeRay(driver), mailbox, "w0")
    channel.last_send = float("inf")  # no time-based sends: count the row-based ones
    sink = RemoteSink(channel, 0, "host:1:a")
    run_id = sink.create_run(**_run_kwargs())
    posts_before = len(mailbox.post.calls)
    steps = 3 * BATCH_ROWS // 2 + 5  # two rows a step: three full batches and 5 steps
    for step in range(1, steps + 1):
        sink.log_metrics(run_id, step, {"a": step, "b": float("nan")})
    sent = mailbox.post.calls[posts_before:]
    assert len(sent) == 3  # one actor call per BATCH_ROWS rows
    for post in sent:  # the driver applies what was sent (no answer awaited)
        driver.handle([post])
    assert len(channel.buffer) == 5 and len(driver.store.metrics(run_id)["a"]) == steps - 5
    sink.flush()
    rows = driver.store.metrics(run_id)
    assert [s for s, _ in rows["a"]] == list(range(1, steps + 1))
    assert all(v != v for _, v in rows["b"])  # NaN stays NaN


def test_a_node_without_the_checkpoint_directory_ends_the_sweep_in_one_line(
    tmp_path: Path, cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver's file in the checkpoint directory is missing for the workers (as on a
    node that does not mount it): the sweep stops with one line naming --checkpoint-dir,
    and its trials wait in the store, untouched."""
    import contextlib
    import io

    from wdlab.sweep import executors

    nodes, _, _ = cluster

    @contextlib.contextmanager
    def nowhere(path: Any) -> Any:
        yield io.StringIO()

    monkeypatch.setattr(executors, "atomic_open", nowhere)
    spec = SweepSpec.create(workload="teacher", axes={"optimizer.lr": [1e-3]}, tiny=True)
    with pytest.raises(WdlabError) as info:
        run_sweep(
            spec,
            tmp_path / "wdlab.db",
            backend="ray",
            address=nodes.address,
            checkpoint_dir=tmp_path / "ckpt",
            progress=False,
        )
    message = str(info.value)
    assert "--checkpoint-dir" in message and str(tmp_path / "ckpt") in message
    assert "\n" not in message and info.value.field == "checkpoint_dir"
    with Store(tmp_path / "wdlab.db") as store:
        (sweep,) = store.list_sweeps()
        assert [t.status for t in store.trials(sweep.id)] == ["pending"]
        assert store.list_runs() == []
