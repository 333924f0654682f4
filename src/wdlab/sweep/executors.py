"""Where workers run: the sweep's own process (one worker), persistent local processes, or
Ray tasks. The dispatcher in wdlab.sweep drives every executor through the same calls:
start(n, job), busy(), idle(seconds) between looks, release_idle() once no trial is left,
interrupt(), wait(timeout), kill(); close() ends a sweep."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wdlab.atomic import atomic_open
from wdlab.errors import WdlabError
from wdlab.store import Store
from wdlab.sweep.driver import Driver
from wdlab.sweep.reaper import process_tree
from wdlab.sweep.worker import Job, one_line, serve, thread_cpus, worker_loop

MAX_WORKER_CRASHES = 5  # worker processes dying (not trials failing): a broken environment
IDLE_GRACE = 2.0  # seconds a Ray sweep with no trial left waits for its workers to end
LOCAL_IDLE_SECONDS = 1.0  # the longest a local pool's dispatcher sleeps between looks


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_cpus(workers: int, threads: int) -> list[tuple[int, ...] | None]:
    """Disjoint CPU sets, `threads` CPUs each, for `workers` local workers where they fit on
    this process's CPUs; else None for every worker (the OS places them). A sweep's trials
    then train on cores of their own, as a one-worker sweep's do."""
    allowed = thread_cpus()
    if allowed is None or workers < 2 or workers * threads > len(allowed):
        return [None] * workers
    return [tuple(allowed[k * threads:(k + 1) * threads]) for k in range(workers)]


def free_cpu_sets(cpu_sets: list[tuple[int, ...] | None],
                  in_use: list[tuple[int, ...] | None]) -> list[tuple[int, ...] | None]:
    """The sets of `cpu_sets` that no running worker holds, for the workers started next."""
    return [cpus for cpus in cpu_sets if cpus is None or cpus not in in_use]


def ray_worker_cpus(ray: Any, workers: int) -> list[tuple[int, ...] | None]:
    """worker_cpus for Ray's one-CPU tasks where Ray is one node, this process's: then every
    task trains on this machine and can have a core of its own, as the local pool's workers
    do. On a cluster each node's OS places them (None)."""
    alive = [node for node in ray.nodes() if node.get("Alive")]
    if len(alive) == 1 and alive[0].get("NodeID") == ray.get_runtime_context().get_node_id():
        return worker_cpus(workers, 1)
    return [None] * workers


class InlineExecutor:
    """One local worker: train in this process (no second torch import). start() returns
    when the sweep has no pending trial left or a Ctrl-C stopped it (then `stop` is set)."""

    def __init__(self, stop: threading.Event, on_trial: Callable[[], None]) -> None:
        self.stop, self.on_trial = stop, on_trial

    def start(self, n: int, job: Job) -> None:
        import torch

        threads = torch.get_num_threads()
        try:
            completed = worker_loop(job, stop=self.stop, on_trial=self.on_trial)
        finally:
            torch.set_num_threads(threads)
        if not completed:
            self.stop.set()  # train.run took the Ctrl-C itself; the dispatcher must know

    def busy(self) -> int:
        return 0

    def idle(self, seconds: float) -> None:
        time.sleep(seconds)

    def release_idle(self) -> None:
        pass

    def interrupt(self) -> None:
        pass

    def wait(self, timeout: float) -> bool:
        return True

    def kill(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Process:
    """One persistent worker process and its end of the pipe."""

    def __init__(self, ctx: Any, omp_threads: int) -> None:
        parent_end, child_end = ctx.Pipe()
        self.conn = parent_end
        self.job: Job | None = None
        self.cpus: tuple[int, ...] | None = None
        self.stop = ctx.Event()
        self.process = ctx.Process(
            target=serve,
            args=(child_end, self.stop, os.getpid(), omp_threads),
            daemon=True,
            name="wdlab-sweep-worker",
        )
        # The child starts with SIGINT ignored (the disposition survives exec) until its own
        # handler is in place: a Ctrl-C during its start-up must not print a traceback there.
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
        try:
            self.process.start()
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
        child_end.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()


class LocalPool:
    """Persistent worker processes of the 'spawn' context (no forked torch or SQLite state).

    Why persistent: a spawned worker spends seconds importing torch before its first trial.
    Workers here import it once and then serve sweep after sweep (a `wdlab bench`, a
    benchmark, a notebook), like Ray's pooled workers; an idle worker exits after
    IDLE_SECONDS, and all of them with this process (pipe closed, or PR_SET_PDEATHSIG when it
    is killed). Why no worker on a thread of this process: torch threads training while the
    interpreter exits end in `terminate called without an active exception` (Ctrl-C), and a
    process-wide torch thread count cannot be one trial's."""

    def __init__(self) -> None:
        import multiprocessing

        self.ctx = multiprocessing.get_context("spawn")
        self.owner = os.getpid()
        self.processes: list[_Process] = []

    def take(self, n: int, omp_threads: int) -> list[_Process]:
        """n idle live workers, spawning what is missing (they import torch meanwhile)."""
        self.processes = [p for p in self.processes if p.alive()]
        idle = [p for p in self.processes if p.job is None]
        while len(idle) < n:
            proc = _Process(self.ctx, omp_threads)
            self.processes.append(proc)
            idle.append(proc)
        return idle[:n]

    def shutdown(self, timeout: float = 5.0) -> None:
        if os.getpid() != self.owner:  # a forked copy: the processes are not ours
            return
        for proc in self.processes:
            with contextlib.suppress(OSError):
                proc.conn.send(None)
        deadline = time.monotonic() + timeout
        for proc in self.processes:
            proc.process.join(max(deadline - time.monotonic(), 0.1))
            if proc.process.is_alive():
                proc.process.kill()
                proc.process.join(1)
        self.processes = []


_POOL: LocalPool | None = None


def local_pool() -> LocalPool:
    global _POOL
    if _POOL is None or _POOL.owner != os.getpid():
        _POOL = LocalPool()
    return _POOL


@atexit.register
def shutdown_workers() -> None:
    """End the persistent local workers now (they also end with this process)."""
    global _POOL
    if _POOL is not None:
        _POOL.shutdown()
        _POOL = None


class LocalExecutor:
    """Workers from the persistent pool; each gets the sweep as one job."""

    def __init__(self, workers: int) -> None:
        self.pool = local_pool()
        self.omp_threads = max(1, cores() // workers)
        self.cpu_sets = worker_cpus(workers, self.omp_threads)
        self.mine: list[_Process] = []
        self.crashes = 0
        self.last_error = ""

    def prewarm(self, n: int) -> None:
        """Start n workers now, so their torch import overlaps the sweep's set-up."""
        self.pool.take(n, self.omp_threads)

    def start(self, n: int, job: Job) -> None:
        free = free_cpu_sets(self.cpu_sets, [proc.cpus for proc in self.mine])
        for proc in self.pool.take(n, self.omp_threads):
            proc.job = job
            proc.cpus = free.pop(0) if free else None
            proc.stop.clear()
            with contextlib.suppress(OSError):  # died since take(): busy() counts it
                proc.conn.send(dataclasses.replace(job, cpus=proc.cpus))
            self.mine.append(proc)

    def busy(self) -> int:
        running = []
        for proc in self.mine:
            reply = None
            try:
                if proc.conn.poll():
                    reply = proc.conn.recv()
            except (EOFError, OSError):
                reply = None
            if reply is not None:
                proc.job = None
                if reply[0] == "error":
                    self._crashed(reply[1])
                continue
            if not proc.alive():
                proc.job = None
                if proc.process.exitcode not in (0, None):
                    self._crashed(f"exit code {proc.process.exitcode}")
                continue
            running.append(proc)
        self.mine = running
        return len(running)

    def idle(self, seconds: float) -> None:
        """Block until a worker answers or dies, or LOCAL_IDLE_SECONDS pass: the workers
        claim their trials themselves, so the dispatcher has nothing to do in between, and
        on a machine whose cores all train, a dispatcher waking every `seconds` to look
        takes its CPU from the workers."""
        from multiprocessing.connection import wait

        handles = [p.conn for p in self.mine] + [p.process.sentinel for p in self.mine]
        if handles:
            wait(handles, timeout=max(seconds, LOCAL_IDLE_SECONDS))
        else:
            time.sleep(seconds)

    def release_idle(self) -> None:
        pass

    def _crashed(self, what: str) -> None:
        self.crashes += 1
        self.last_error = what
        if self.crashes > MAX_WORKER_CRASHES:
            raise WdlabError(
                f"sweep workers crashed {self.crashes} times (last: {what}); run one trial "
                "with `wdlab run` to see why (a script must call run_sweep under "
                "`if __name__ == '__main__':`)",
                field="workers",
            )

    def interrupt(self) -> None:
        for proc in self.mine:
            proc.stop.set()  # the trial in flight checkpoints and goes back to the queue

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.1)
        return not self.mine

    def kill(self) -> None:
        for proc in self.mine:
            proc.process.kill()
            proc.process.join(5)
            proc.job = None
        self.mine = []

    def close(self) -> None:
        pass  # the workers stay for the next sweep


def local_ray_options(num_cpus: int) -> dict[str, Any]:
    """ray.init() arguments for a Ray of our own on this machine. address="local": a new
    instance even where another cluster runs here (ray.init() alone would join that one and
    then refuse num_cpus). worker_niceness 0: Ray starts its workers at nice 15, so beside
    any other work (the local pool's workers run at 0) its trials got a fraction of a core;
    measured under load, trials trained 3-4x slower than on the local pool."""
    return {
        "address": "local",
        "num_cpus": num_cpus,
        "include_dashboard": False,
        "log_to_driver": False,
        "_system_config": {"worker_niceness": 0},
    }


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise WdlabError(
            "the ray backend needs Ray: pip install wdlab[ray] (or use --backend local)",
            field="backend",
        ) from None
    return ray


class RayExecutor:
    """Ray tasks as workers, with this process as the store's one writer (wdlab.sweep.driver):
    the workers never open the store, so they may run on any node of a cluster. What every
    node must reach is the checkpoint directory (`runs_root`, a shared filesystem); a task
    on a node that cannot see it ends the sweep with one line saying so.

    The Mailbox actor (wdlab.sweep.remote) sits on this process's node and carries the
    messages; the dispatcher's idle time is spent answering them (idle() pumps)."""

    def __init__(self, workers: int, address: str | None, store: Store, job: Job) -> None:
        ray = import_ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from wdlab.sweep.remote import REACH_FILE, Mailbox, ray_worker

        self.ray, self.refs = ray, {}
        self.owned = False
        if not ray.is_initialized():
            try:
                if address is None:
                    ray.init(**local_ray_options(workers or 2))
                else:
                    ray.init(address=address, log_to_driver=False)
            except Exception as err:  # noqa: BLE001 - Ray raises bare Exception on time-outs
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                raise WdlabError(
                    f"cannot start or reach {where}: {str(err).splitlines()[0]}; check "
                    "--address (or start one with `ray start --head`)",
                    field="address",
                ) from None
            self.owned = True
        record = store.get_sweep(job.sweep_id)
        self.job = dataclasses.replace(
            job, store_path=None, base=record.spec["base_config"], sweep_name=record.name
        )
        self.driver = Driver(store, job.sweep_id, Path(job.runs_root))
        here = ray.get_runtime_context().get_node_id()
        self.mailbox = (
            ray.remote(Mailbox)
            .options(
                num_cpus=0,
                max_concurrency=1000,
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
            )
            .remote()
        )
        self.nonce = uuid.uuid4().hex[:12]
        self.reach_file = Path(job.runs_root) / REACH_FILE.format(nonce=self.nonce)
        with atomic_open(self.reach_file) as f:
            f.write(f"{job.sweep_id}\n")
        self.task = ray.remote(num_cpus=1, max_retries=0)(ray_worker)
        self.host_pid = f"{socket.gethostname()}:{os.getpid()}"
        self.cpu_sets = ray_worker_cpus(ray, workers)
        self.token_cpus: dict[str, tuple[int, ...] | None] = {}
        self.started = 0
        self.crashes = 0
        self.idle_since: float | None = None
        self.reaper: subprocess.Popen[str] | None = None
        if self.owned and address is None and os.path.isdir("/proc"):
            self.reaper = subprocess.Popen(
                [sys.executable, "-m", "wdlab.sweep.reaper"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,  # it must outlive this process, and Ctrl-C is ours
            )
            self._list_processes()

    def _list_processes(self) -> None:
        """Tell the reaper which processes end with this one (Ray's, started by us)."""
        if self.reaper is None:
            return
        tree = process_tree(os.getpid())
        tree.pop(self.reaper.pid, None)
        with contextlib.suppress(OSError):
            self.reaper.stdin.write("".join(f"{pid} {start}\n" for pid, start in tree.items()))
            self.reaper.stdin.flush()

    def start(self, n: int, job: Job) -> None:
        self.idle_since = None
        free = free_cpu_sets(self.cpu_sets, [self.token_cpus.get(t) for t in self.refs.values()])
        for _ in range(n):
            token = f"w{self.started}"
            self.started += 1
            cpus = self.token_cpus[token] = free.pop(0) if free else None
            ref = self.task.remote(dataclasses.replace(self.job, cpus=cpus), self.mailbox, token,
                                   self.nonce, self.host_pid)
            self.refs[ref] = token
        self._list_processes()

    def busy(self) -> int:
        if self.refs:
            ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
            for ref in ready:
                token = self.refs.pop(ref)
                try:
                    outcome, message = self.ray.get(ref)
                except Exception as err:  # noqa: BLE001 - node lost, worker crashed, killed
                    self.driver.forget(token)
                    self._crashed(one_line(err))
                    continue
                self.driver.forget(token)
                if outcome == "unreachable":
                    raise WdlabError(message, field="checkpoint_dir")
        return len(self.refs)

    def _crashed(self, what: str) -> None:
        self.crashes += 1
        if self.crashes > MAX_WORKER_CRASHES:
            raise WdlabError(
                f"Ray sweep workers were lost {self.crashes} times (last: {what}); run one "
                "trial with `wdlab run` on a node to see why",
                field="workers",
            )

    def idle(self, seconds: float) -> None:
        """Answer the workers' messages for up to `seconds` (the dispatcher's pause)."""
        taken = self.ray.get(self.mailbox.take.remote(seconds))
        replies = self.driver.handle(taken)
        if replies:
            self.mailbox.answer.remote(replies)

    def release_idle(self) -> None:
        """No trial is pending or running, so no worker holds one: cancel the tasks still
        waiting for a CPU, and stop waiting for the others after IDLE_GRACE seconds (a live
        one ends by itself on its next empty claim; a lost node's task may take Ray tens of
        seconds to report)."""
        if self.idle_since is None:
            self.idle_since = time.monotonic()
        late = time.monotonic() - self.idle_since > IDLE_GRACE
        for ref, token in list(self.refs.items()):
            if token not in self.driver.greeted:
                self.ray.cancel(ref)
            elif not late:
                continue
            self.refs.pop(ref)
            self.driver.forget(token)

    def interrupt(self) -> None:
        self.mailbox.stop.remote()  # each worker's trial checkpoints and goes back

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.busy() and time.monotonic() < deadline:
            self.idle(0.1)  # the stopping workers flush and requeue through the driver
        return not self.refs

    def kill(self) -> None:
        for ref, token in self.refs.items():
            self.ray.cancel(ref, force=True)
            self.driver.forget(token)
        self.refs = {}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ray.kill(self.mailbox)
        with contextlib.suppress(OSError):
            self.reach_file.unlink()
        if self.owned:
            self.ray.shutdown()
        if self.reaper is not None:
            with contextlib.suppress(OSError):
                self.reaper.stdin.write("done\n")
                self.reaper.stdin.close()
            self.reaper.wait(10)
            self.reaper = None
