"""A sweep worker: claim a trial from the queue, train it, record it, repeat.

The same loop runs in a persistent local process (`serve`), in a Ray task, or (one local
worker) in the sweep's own process, so every executor gives the same results. What the loop
talks to is a TrialLink: the store itself for local workers (StoreLink), the sweep's driver
for Ray workers (wdlab.sweep.remote.DriverLink, which never opens the store). Workers pull
from the queue instead of being pushed work because the queue is the single source of
truth: a sweep killed at any instant (SIGKILL, OOM, a lost Ray node) loses nothing, and the
next command puts back the trials whose owner is dead (same host, pid gone) or silent
(stale heartbeat) and resumes their runs from their last checkpoint.

Importing this module stays cheap (no torch): spawned workers import it first, and only
then torch, once for all the sweeps they serve.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from wdlab.errors import UserCodeError, WdlabError
from wdlab.store import Store, TrialQueue, TrialRecord
from wdlab.sweep.spec import TRIAL_THREADS, run_name, trial_config

HEARTBEAT_SECONDS = 2.0
STALE_SECONDS = 60.0  # a trial silent this long is taken from its (presumed dead) worker
IDLE_SECONDS = 600.0  # a persistent local worker with no job this long exits by itself


@dataclass(frozen=True)
class Job:
    """What a worker needs to serve one sweep: where checkpoints go, in which order to claim
    trials (longest first; [] means by index), and either the store's path (local workers
    open it) or the sweep's base config and name (Ray workers, which never see the store)."""

    sweep_id: str
    runs_root: str
    order: list[int] = field(default_factory=list)
    store_path: str | None = None
    base: dict[str, Any] | None = None
    sweep_name: str = ""
    cpus: tuple[int, ...] | None = None
    """The CPUs this worker's trials run on (local pool, and Ray on one node of this process:
    one core per worker where the workers fit on the cores); None: wherever the OS puts
    them."""


# --------------------------------------------------------------------------- recovery


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def owner_dead(worker: str | None) -> bool:
    """True when `worker` (host:pid:...) ran on this host and its process is gone."""
    if not worker:
        return True
    host, _, rest = worker.partition(":")
    if host != socket.gethostname():
        return False  # another machine: only a stale heartbeat can tell
    try:
        pid = int(rest.split(":")[0])
    except ValueError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def recover_trials(store: Store, sweep_id: str, stale_seconds: float = STALE_SECONDS) -> list[int]:
    """Requeue running trials whose owner died on this host or fell silent; their indices."""
    indices = []
    for trial in store.trials(sweep_id, status="running"):
        owner = trial.worker
        if owner_dead(owner) and store.requeue_trial(sweep_id, trial.trial_index, owner):
            indices.append(trial.trial_index)
    indices += store.requeue_stale_trials(sweep_id, older_than=stale_seconds)
    return sorted(indices)


# --------------------------------------------------------------------------- one trial


class TrialLink(Protocol):
    """What a worker loop talks to: the trial queue, the decision how a claimed trial starts,
    and the RunSink its run writes to. StoreLink is the store itself; a Ray worker's link
    forwards all three to the sweep's driver."""

    queue: TrialQueue

    def begin(self, trial: TrialRecord, name: str) -> tuple[bool, str | None]: ...
    def sink(self, trial: TrialRecord, worker: str, stop: Any) -> Any: ...


def prepare_trial(
    store: Store, trial: TrialRecord, runs_root: Path, name: str
) -> tuple[bool, str | None]:
    """How a claimed trial starts: (already ended, run id to resume or None).

    A trial whose run trained to the end before a crash is finished here (only its trial row
    was not updated); a run with a checkpoint is resumed; a run killed before its first
    checkpoint, or created and killed before it was linked, is deleted and trained afresh."""
    sweep_id, index = trial.sweep_id, trial.trial_index
    if trial.run_id is not None:
        try:
            previous = store.get_run(trial.run_id)
        except WdlabError:
            previous = None
        if previous is not None and previous.status in ("finished", "diverged"):
            store.finish_trial(sweep_id, index, status=previous.status, run_id=previous.id)
            return True, None
        if previous is not None and (runs_root / previous.id / "last.pt").is_file():
            return False, previous.id
        if previous is not None:
            store.delete_run(previous.id)  # killed before its first checkpoint
    for run in store.list_runs(sweep_id=sweep_id):  # created, then killed before linking
        if run.name == name and run.status in ("created", "running"):
            store.delete_run(run.id)
    return False, None


class StoreLink:
    """A local worker's link: the store's own queue, checked in this process."""

    def __init__(self, store: Store, sweep_id: str, runs_root: Path) -> None:
        self.store, self.sweep_id, self.runs_root = store, sweep_id, runs_root
        self.queue: TrialQueue = store.trial_queue(sweep_id)

    def begin(self, trial: TrialRecord, name: str) -> tuple[bool, str | None]:
        return prepare_trial(self.store, trial, self.runs_root, name)

    def sink(self, trial: TrialRecord, worker: str, stop: Any) -> Any:
        return _TrialStore(self.store, self.sweep_id, trial.trial_index, worker, stop)


def pass_stop_on(stop: Any, passed_on: bool) -> bool:
    """Hand a stop request (`stop` set: Ctrl-C on the sweep) on to the training loop: what a
    SIGINT would do, which train.run turns into checkpoint-and-stop at the next step
    boundary. Called at each metric row; True once it has been passed on.

    The SIGINT handler is called directly rather than through signal.raise_signal: in a Ray
    worker the raised signal never reached Python's handler (Ray's core owns the C-level
    one), and the trial trained on to its end."""
    if passed_on or stop is None or not stop.is_set():
        return passed_on
    if threading.current_thread() is not threading.main_thread():
        return passed_on
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, None)
    else:
        signal.raise_signal(signal.SIGINT)
    return True


class _TrialStore:
    """The worker's store as train.run sees it: new runs belong to the sweep and are linked
    to the trial the moment they exist, so a crash right after still knows the run.

    It also hands a stop request (`stop` set: Ctrl-C on the sweep) on to the training loop:
    at the first metric row after it, it raises SIGINT in this process, which train.run
    turns into checkpoint-and-stop at the next step boundary."""

    def __init__(self, store: Store, sweep_id: str, index: int, worker: str, stop: Any) -> None:
        self._store, self._sweep_id, self._index, self._worker = store, sweep_id, index, worker
        self._stop, self._passed_on = stop, False
        self.run_id: str | None = None

    def create_run(self, **kwargs: Any) -> str:
        run_id = self._store.create_run(**kwargs, sweep_id=self._sweep_id)
        self.run_id = run_id
        self._store.heartbeat_trial(self._sweep_id, self._index, self._worker, run_id=run_id)
        return run_id

    def log_metrics(self, run_id: str, step: int, metrics: Any) -> None:
        self._store.log_metrics(run_id, step, metrics)
        self._passed_on = pass_stop_on(self._stop, self._passed_on)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class _Heartbeat(threading.Thread):
    """Beats for the current trial; ends the process when `orphaned()` says the sweep that
    started this worker is gone (a SIGKILLed `wdlab sweep` must not leave trainers running)."""

    def __init__(self, queue: TrialQueue, worker: str, orphaned: Callable[[], bool]) -> None:
        super().__init__(daemon=True, name="wdlab-heartbeat")
        self.queue, self.worker, self.orphaned = queue, worker, orphaned
        self.current: int | None = None
        self.lost = False
        self.stopped = threading.Event()

    def run(self) -> None:
        last_beat = time.monotonic()
        while not self.stopped.wait(0.25):
            if self.orphaned():
                os._exit(3)  # the trial stays 'running'; the next sweep sees a dead owner
            if time.monotonic() - last_beat < HEARTBEAT_SECONDS:
                continue
            last_beat = time.monotonic()
            index = self.current
            if index is not None:
                try:
                    if not self.queue.heartbeat(index, self.worker):
                        self.lost = True
                except Exception:  # a busy store or driver: try again next beat
                    pass


def _result_status(run_status: str) -> str:
    return {"finished": "finished", "diverged": "diverged"}.get(run_status, "failed")


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    body = text[0] if text else ""
    return body if isinstance(err, (WdlabError, UserCodeError)) else f"{type(err).__name__}: {body}"


def _run_trial(
    link: TrialLink,
    trial: TrialRecord,
    worker: str,
    base: dict[str, Any],
    sweep_name: str,
    runs_root: Path,
    beat: _Heartbeat,
    stop: Any,
) -> bool:
    """Train one claimed trial and record its outcome. False when interrupted (Ctrl-C): the
    trial went back to pending and the worker should stop."""
    from wdlab import train

    index, queue = trial.trial_index, link.queue
    name = run_name(sweep_name, index)
    proxy = link.sink(trial, worker, stop)
    try:
        ended, resume_id = link.begin(trial, name)
        if ended:
            return True
        config = trial_config(base, trial.params, name)
        if resume_id is not None:
            proxy.run_id = resume_id
        result = train.run(config, proxy, runs_root, resume_id=resume_id)
    except KeyboardInterrupt:
        queue.requeue(index, worker)
        return False
    except DriverGone:
        raise
    except Exception as err:  # a failing trial is a result; it never stops the others
        if not beat.lost:
            queue.finish(index, status="failed", run_id=proxy.run_id, error=one_line(err))
        return True
    if result.status == "interrupted":
        queue.requeue(index, worker)
        return False
    if not beat.lost:  # someone else took the trial over; its outcome is theirs to record
        status = _result_status(result.status)
        error = (result.message or None) if status != "finished" else None
        queue.finish(index, status=status, run_id=result.run_id, error=error)
    return True


class DriverGone(Exception):
    """A Ray worker lost its sweep's driver (killed, or its node lost): stop, record nothing
    (there is no one to record to); the next driver requeues and resumes the trial."""


def worker_loop(
    job: Job,
    *,
    link: TrialLink | None = None,
    orphaned: Callable[[], bool] = lambda: False,
    stop: Any = None,
    on_trial: Callable[[], None] | None = None,
) -> bool:
    """Claim and train trials until none is pending; False when stopped (Ctrl-C, or `stop`
    set). Without `link` the worker opens the job's store (a local worker). A trial's torch
    threads are its config's `train.threads` (the sweep fixes it at creation); sweeps stored
    before that get TRIAL_THREADS too, never a count derived from the number of workers."""
    if link is None:
        if job.store_path is None:
            raise WdlabError("a sweep job needs a store path or a link", field="store")
        with Store(job.store_path) as store:
            record = store.get_sweep(job.sweep_id)
            base, sweep_name = record.spec["base_config"], record.name
            own = StoreLink(store, job.sweep_id, Path(job.runs_root))
            return _loop(job, own, base, sweep_name, orphaned, stop, on_trial)
    if job.base is None:
        raise WdlabError("a sweep job for a link needs the sweep's base config", field="base")
    return _loop(job, link, job.base, job.sweep_name, orphaned, stop, on_trial)


def _loop(
    job: Job,
    link: TrialLink,
    base: dict[str, Any],
    sweep_name: str,
    orphaned: Callable[[], bool],
    stop: Any,
    on_trial: Callable[[], None] | None,
) -> bool:
    import torch

    torch.set_num_threads(TRIAL_THREADS)
    worker = worker_id()
    interrupted = False
    queue = link.queue
    beat = _Heartbeat(queue, worker, orphaned)
    beat.start()
    try:
        while not orphaned():
            if stop is not None and stop.is_set():
                interrupted = True
                break
            try:
                trial = queue.claim(worker, order=job.order)
            except KeyboardInterrupt:
                interrupted = True
                break
            if trial is None:
                break
            beat.current, beat.lost = trial.trial_index, False
            try:
                carry_on = _run_trial(
                    link, trial, worker, base, sweep_name, Path(job.runs_root), beat, stop
                )
            except KeyboardInterrupt:
                queue.requeue(trial.trial_index, worker)
                carry_on = False
            beat.current = None
            if on_trial is not None:
                on_trial()
            if not carry_on:
                interrupted = True
                break
    finally:
        beat.stopped.set()
    return not interrupted


# --------------------------------------------------------------------------- local processes


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux PR_SET_PDEATHSIG),
    and leave at once if it already has. Set first thing, before the seconds-long torch
    import, so that a SIGKILLed sweep leaves no worker behind even mid-start-up."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the heartbeat watches
            pass
    if os.getppid() != parent_pid:
        os._exit(3)


def thread_cpus() -> tuple[int, ...] | None:
    """The CPUs this thread may run on (None where the OS cannot say: not Linux)."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return None


def pin_thread(cpus: tuple[int, ...] | None) -> None:
    """Run this thread (the one that trains: a trial's torch threads default to 1, and
    OpenMP threads started later inherit the mask) on `cpus`. Why: two one-thread trainers
    that the scheduler moves between the cores lose their L2 contents on every move."""
    if cpus is None:
        return
    with contextlib.suppress(AttributeError, OSError, ValueError):  # not Linux, CPU gone
        os.sched_setaffinity(0, cpus)


def serve(conn: Any, stop: Any, parent_pid: int, omp_threads: int) -> None:
    """The main of a persistent local worker process: import torch once, then run the jobs
    (one per sweep) that the parent sends over `conn`, answering each with
    ("done", completed). Exits on None, on the parent's death, or after IDLE_SECONDS idle.

    Stopping: the parent sets `stop` (a multiprocessing Event) on Ctrl-C; the worker takes
    no new trial, and the trial in flight checkpoints and goes back to the queue (the
    _TrialStore passes the request on to train.run). The process leaves the terminal's
    process group, so the terminal's SIGINT reaches only the parent (with a second SIGINT
    here, train.run would abort mid-step), and ignores SIGINT outside training (from the
    spawn on: the parent ignores it around the start), so no traceback comes from here."""
    os.environ["OMP_NUM_THREADS"] = str(omp_threads)  # before torch: sizes OpenMP's pool
    die_with_parent(parent_pid)
    with contextlib.suppress(OSError):  # already a group leader
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # train.run handles it while it trains
    import torch  # noqa: F401 - the one import this process pays, before the first job

    every_cpu = thread_cpus()

    def orphaned() -> bool:
        return os.getppid() != parent_pid

    while True:
        try:
            if not conn.poll(IDLE_SECONDS):
                return
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        pin_thread(job.cpus or every_cpu)
        try:
            completed = worker_loop(job, orphaned=orphaned, stop=stop)
        except Exception as err:  # the store vanished or similar: report, stay available
            conn.send(("error", one_line(err)))
        else:
            conn.send(("done", completed))
