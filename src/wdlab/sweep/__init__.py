"""Sweeps: a spec becomes trials in the run store; workers train them; a re-run resumes.

    spec.py        SweepSpec --trials()--> [{dotted key: value, "seed": s}, ...] -> the store
    worker.py      claim a trial (atomic), train it with train.run, heartbeat, record it
    executors.py   where workers run: this process (1 worker), persistent local processes, Ray
    results.py     the summary table, from the store alone
    command.py     `wdlab sweep`: flags <-> spec, exit codes
    here           run_sweep: find or create the sweep, keep `workers` workers busy, recover
                   dead workers' trials, and on Ctrl-C stop cleanly so the same command resumes

Importing this package stays cheap (no torch, no ray): the CLI and spawned workers import it.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wdlab.errors import ConfigError
from wdlab.store import Store
from wdlab.sweep.command import (
    add_arguments,
    command_for,
    print_summary,
    spec_from_args,
    sweep_main,
)
from wdlab.sweep.executors import (
    InlineExecutor,
    LocalExecutor,
    RayExecutor,
    import_ray,
    shutdown_workers,
)
from wdlab.sweep.results import SweepSummary, TrialResult, counts, summarize
from wdlab.sweep.spec import (
    FLAG_KEYS,
    MAX_TRIALS,
    TRIAL_CHECKPOINT_SECONDS,
    TRIAL_THREADS,
    RangeSpec,
    SweepSpec,
    find_or_create_sweep,
    longest_first,
    parse_axis,
    parse_grid,
    run_name,
    trial_config,
    trial_cost,
    validated_trials,
)
from wdlab.sweep.worker import HEARTBEAT_SECONDS, STALE_SECONDS, Job, recover_trials

__all__ = [
    "FLAG_KEYS",
    "HEARTBEAT_SECONDS",
    "MAX_TRIALS",
    "STALE_SECONDS",
    "TRIAL_CHECKPOINT_SECONDS",
    "TRIAL_THREADS",
    "RangeSpec",
    "SweepInterrupted",
    "SweepSpec",
    "SweepSummary",
    "TrialResult",
    "add_arguments",
    "command_for",
    "find_or_create_sweep",
    "longest_first",
    "parse_axis",
    "parse_grid",
    "print_summary",
    "recover_trials",
    "run_name",
    "run_sweep",
    "runs_root_for",
    "shutdown_workers",
    "spec_from_args",
    "summarize",
    "sweep_main",
    "trial_config",
    "trial_cost",
]

RECOVER_SECONDS = 5.0  # how often a running sweep looks for dead or silent workers
STOP_SECONDS = 60.0  # after Ctrl-C, how long workers get to checkpoint before they are killed


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a sweep cleanly: every trial in flight was checkpointed (or, if its
    worker had to be killed, left resumable) and put back; the same command continues."""

    def __init__(self, sweep_id: str, name: str, counts: dict[str, int]) -> None:
        self.sweep_id, self.name, self.counts = sweep_id, name, counts
        ended = counts["finished"] + counts["diverged"] + counts["failed"]
        total = sum(counts.values())
        super().__init__(
            f"sweep {name} interrupted: {ended} of {total} trials ended, {counts['pending']} "
            "back in the queue (each resumes from its last checkpoint)"
        )

    def __str__(self) -> str:
        return str(self.args[0])


def runs_root_for(store_path: Path) -> Path:
    """Checkpoints live beside the store, one folder per run (as `wdlab run` keeps them)."""
    return Path(store_path).resolve().parent / "wdlab-runs"


@contextmanager
def _ctrl_c() -> Iterator[threading.Event]:
    """The first Ctrl-C sets the event (the dispatcher stops the sweep cleanly); a second
    raises KeyboardInterrupt (stop waiting for workers: kill them). Off the main thread
    there is no handler to install and Ctrl-C stays a plain KeyboardInterrupt."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def run_sweep(
    spec: SweepSpec,
    store_path: Path,
    *,
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    progress: bool = True,
    max_trials: int = MAX_TRIALS,
    on_start: Callable[[str, bool], None] | None = None,
    checkpoint_dir: Path | None = None,
) -> SweepSummary:
    """Run (or resume) a sweep to the end; the summary of every trial.

    Raises SweepInterrupted (a KeyboardInterrupt) after a Ctrl-C once the workers stopped
    and their trials are back in the queue. `on_start(sweep_id, created)` is called once
    the sweep is in the store, before training. Checkpoints go to `checkpoint_dir` (default:
    runs_root_for(store_path), beside the store); with Ray on several machines it must be
    a directory every node reaches at the same path, while the store stays the driver's.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be an integer >= 1, got {workers!r}", field="workers")
    if backend not in ("local", "ray"):
        raise ConfigError(f"--backend {backend!r} is not known; use local or ray", field="backend")
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise ConfigError(
            f"--max-trials must be an integer >= 1, got {max_trials!r}", field="max_trials"
        )
    spec.check_size(max_trials)  # before the store is touched
    prepared = validated_trials(spec)  # every trial's config: a bad axis creates no store
    if backend == "ray":
        import_ray()  # fail before touching the store
    from wdlab.progress import RichProgress, make_progress
    from wdlab.sweep.live import running_steps, step_fields

    start = time.perf_counter()
    store_path = Path(store_path).resolve()  # workers (Ray's too) may run in another cwd
    runs_root = (
        runs_root_for(store_path) if checkpoint_dir is None else Path(checkpoint_dir).resolve()
    )
    with _ctrl_c() as stop:
        pool = LocalExecutor(workers) if backend == "local" and workers > 1 else None
        if pool is not None:
            pool.prewarm(workers)  # the workers import torch while the sweep is set up
        with Store(store_path) as store:
            sweep_id, created = find_or_create_sweep(store, spec, prepared)
            if on_start is not None:
                on_start(sweep_id, created)
            record = store.get_sweep(sweep_id)
            trials = store.trials(sweep_id)
            base = record.spec["base_config"]
            order = longest_first(base, {t.trial_index: t.params for t in trials})
            job = Job(sweep_id, str(runs_root), order, store_path=str(store_path))
            bar = make_progress(f"sweep {record.name}", enabled=progress, unit="trial")
            shown = [-1]
            live_bar = isinstance(bar, RichProgress)  # plain lines: only when a trial ends
            live: dict[str, Any] = {"steps": {}, "at": 0.0}

            def report() -> dict[str, int]:
                now = counts(store, sweep_id)
                done = now["finished"] + now["diverged"] + now["failed"]
                steps_changed = False
                if live_bar and time.monotonic() - live["at"] >= 1.0:  # steps inside trials
                    previous = live["steps"]
                    live["steps"], live["at"] = running_steps(store, sweep_id), time.monotonic()
                    steps_changed = live["steps"] != previous
                if bar is not None and (done != shown[0] or steps_changed):
                    ended = ("finished", "diverged", "failed")
                    fields: dict[str, Any] = {k: float(now[k]) for k in ended if now[k]}
                    if steps_changed:
                        fields.update(step_fields(live["steps"], previous))
                    bar.update(done, fields)
                    shown[0] = done
                return now

            executor: Any = pool
            if backend == "ray":
                executor = RayExecutor(workers, address, store, job)
            elif workers == 1:
                executor = InlineExecutor(stop, report)
            store.update_sweep(sweep_id, status="running")
            try:
                if bar is not None:
                    now = counts(store, sweep_id)
                    bar.start(len(trials), len(trials) - now["pending"] - now["running"])
                _dispatch(store, job, executor, workers, report, stop)
                if stop.is_set():
                    raise KeyboardInterrupt
            except KeyboardInterrupt:
                if bar is not None:
                    bar.stop()  # before the messages; stopping twice is harmless
                _stop_workers(executor)
                recover_trials(store, sweep_id)
                store.update_sweep(sweep_id, status="interrupted")
                raise SweepInterrupted(sweep_id, record.name, counts(store, sweep_id)) from None
            except BaseException:
                executor.interrupt()
                if not _wait_quietly(executor, 5.0):
                    executor.kill()
                recover_trials(store, sweep_id)
                store.update_sweep(sweep_id, status="failed")
                raise
            finally:
                if bar is not None:
                    bar.stop()
                executor.close()
            store.update_sweep(sweep_id, status="finished")
            summary = summarize(store, sweep_id, time.perf_counter() - start)
            summary.created = created
            return summary


def _wait_quietly(executor: Any, timeout: float) -> bool:
    try:
        return executor.wait(timeout)
    except (KeyboardInterrupt, Exception):  # noqa: BLE001 - already on the way out
        return False


def _stop_workers(executor: Any) -> None:
    """After Ctrl-C: one SIGINT per busy worker (its trial checkpoints and goes back), then
    wait; kill them if they take longer than STOP_SECONDS or Ctrl-C comes again (their
    trials stay resumable from the last checkpoint and are requeued as dead owners')."""
    executor.interrupt()
    busy = executor.busy()
    if busy:
        print(
            f"wdlab sweep: stopping {busy} worker{'s' if busy > 1 else ''}: their trials "
            "checkpoint and go back to the queue (Ctrl-C again to kill them now)",
            file=sys.stderr,
            flush=True,
        )
    try:
        stopped = executor.wait(STOP_SECONDS)
    except KeyboardInterrupt:
        stopped = False
    if not stopped:
        executor.kill()


def _dispatch(
    store: Store,
    job: Job,
    executor: Any,
    workers: int,
    report: Callable[[], dict[str, int]],
    stop: threading.Event,
) -> None:
    """Keep up to `workers` workers busy until every trial has ended (or Ctrl-C set
    `stop`); put back the trials of dead or silent workers."""
    last_recover = -math.inf
    while not stop.is_set():
        if time.monotonic() - last_recover >= RECOVER_SECONDS:
            recover_trials(store, job.sweep_id)
            last_recover = time.monotonic()
        now = report()
        busy = executor.busy()
        if now["pending"] and busy < workers:
            executor.start(min(workers - busy, now["pending"]), job)
            continue
        if not now["pending"] and not now["running"]:
            if busy == 0:
                return
            executor.release_idle()  # workers that never started have nothing left to do
        executor.idle(0.2)
