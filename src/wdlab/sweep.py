"""Sweeps: a spec becomes trials in the run store; executors run them; a re-run resumes.

    SweepSpec --trials()--> [{dotted key: value, "seed": s}, ...] --store--> pending trials
    executor (local process pool | Ray) starts workers; each worker claims one trial at a time
    with Store.claim_trial (atomic), trains it with train.run, heartbeats while it trains and
    records finished | diverged | failed.

Why workers pull from the store instead of a parent pushing work to them: the store is the
single source of truth, so a sweep killed at any instant (SIGKILL, OOM, a lost Ray node)
loses nothing. Running the same command again finds the sweep by the hash of its spec, puts
back the trials whose owner is dead (same host, pid gone) or silent (stale heartbeat), and
resumes their runs from their last checkpoint. Finished trials are never run again.

Importing this module stays cheap (no torch, no ray): the CLI and spawned workers import it.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from wdlab.errors import ConfigError, WdlabError
from wdlab.store import Store, TrialRecord

__all__ = [
    "FLAG_KEYS",
    "HEARTBEAT_SECONDS",
    "STALE_SECONDS",
    "RangeSpec",
    "SweepSpec",
    "SweepSummary",
    "TrialResult",
    "add_arguments",
    "find_or_create_sweep",
    "parse_axis",
    "parse_grid",
    "print_summary",
    "run_sweep",
    "runs_root_for",
    "spec_from_args",
    "summarize",
    "sweep_main",
    "trial_config",
]

HEARTBEAT_SECONDS = 2.0
STALE_SECONDS = 60.0  # a trial silent this long is taken from its (presumed dead) worker
RECOVER_SECONDS = 5.0  # how often a running sweep looks for dead or silent workers
MAX_WORKER_CRASHES = 5  # worker processes dying (not trials failing): a broken environment
SPEC_FORMAT = 1

# The sweep flags that name a config key; anything else goes through --grid key=values.
FLAG_KEYS = {
    "--optimizer": "optimizer.name",
    "--lr": "optimizer.lr",
    "--wd": "optimizer.weight_decay",
}


# --------------------------------------------------------------------------- axes


class RangeSpec(BaseModel):
    """A log-scaled range lo:hi (optionally :n points for a grid); ints stay ints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lo: float = Field(gt=0)
    hi: float = Field(gt=0)
    n: int | None = Field(default=None, ge=1)
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> RangeSpec:
        if not self.lo < self.hi:
            raise ValueError(f"lo ({self.lo:g}) must be below hi ({self.hi:g})")
        return self

    def grid(self, flag: str) -> list[Any]:
        """n log-spaced points from lo to hi, both ends included exactly."""
        if self.n is None:
            raise ConfigError(
                f"{flag} {self.lo:g}:{self.hi:g}: a grid needs a count, e.g. "
                f"{self.lo:g}:{self.hi:g}:5 (or use --sample halton)",
                field=flag,
            )
        if self.n == 1:
            return [self._clean(self.lo)]
        ratio = math.log(self.hi / self.lo)
        points = [self.lo * math.exp(ratio * i / (self.n - 1)) for i in range(self.n)]
        points[0], points[-1] = self.lo, self.hi
        values = [self._clean(p) for p in points]
        return list(dict.fromkeys(values))  # integer ranges may round two points together

    def at(self, u: float) -> Any:
        """The point a fraction u in [0, 1) of the way from lo to hi in log space."""
        value = self.lo * math.exp(math.log(self.hi / self.lo) * u)
        return self._clean(min(max(value, self.lo), self.hi))

    def _clean(self, value: float) -> Any:
        # 12 significant digits: 1e-4 * 10**1.5 prints as 0.00316227766017, not a float tail.
        if self.integer:
            return int(round(value))
        return float(f"{value:.12g}")


Axis = list[Any] | RangeSpec


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _literal(text: str) -> Any:
    """One list item: a number, a TOML literal (true, "x"), else the bare string."""
    from wdlab.config import parse_value

    number = _number(text)
    return number if number is not None else parse_value(text)


def parse_axis(text: str, flag: str = "--grid") -> Axis:
    """'1e-4:1e-1:7' -> RangeSpec (log-spaced); 'a,b' or '0,0.01' -> a literal list.

    Errors are one line naming `flag`.
    """
    text = text.strip()
    if not text:
        raise ConfigError(f"{flag} needs values, e.g. {flag} 1e-4:1e-1:7 or {flag} a,b", field=flag)
    if ":" in text:
        parts = [p.strip() for p in text.split(":")]
        if len(parts) not in (2, 3):
            raise ConfigError(
                f"{flag} {text!r}: a range is lo:hi or lo:hi:n (e.g. 1e-4:1e-1:7)", field=flag
            )
        lo, hi = _number(parts[0]), _number(parts[1])
        n = _number(parts[2]) if len(parts) == 3 else None
        if lo is None or hi is None or (len(parts) == 3 and not isinstance(n, int)):
            raise ConfigError(
                f"{flag} {text!r}: lo and hi must be numbers and n a whole count "
                "(e.g. 1e-4:1e-1:7)",
                field=flag,
            )
        if not 0 < lo < hi:
            raise ConfigError(
                f"{flag} {text!r}: a range is log-scaled and needs 0 < lo < hi; "
                f"list the values instead (e.g. {flag} 0,0.01,0.1)",
                field=flag,
            )
        if n is not None and n < 1:
            raise ConfigError(f"{flag} {text!r}: the count n must be >= 1", field=flag)
        integer = isinstance(lo, int) and isinstance(hi, int)
        return RangeSpec(lo=lo, hi=hi, n=n, integer=integer)
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise ConfigError(
            f"{flag} {text!r}: empty item in the list; separate values with single commas",
            field=flag,
        )
    return [_literal(item) for item in items]


def parse_grid(item: str) -> tuple[str, Axis]:
    """'--grid model.width=32,64' -> ('model.width', [32, 64])."""
    key, sep, values = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"--grid expects key=values (e.g. --grid model.width=32,64), got {item!r}",
            field="--grid",
        )
    return key, parse_axis(values, flag=f"--grid {key}")


def _flag_for(key: str) -> str:
    for flag, k in FLAG_KEYS.items():
        if k == key:
            return flag
    return f"--grid {key}"


# --------------------------------------------------------------------------- the spec


class SweepSpec(BaseModel):
    """What to sweep. `n_trials` is the number of Halton points (`--trials`); each point
    and each grid point runs once per seed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workload: str
    axes: dict[str, list[Any] | RangeSpec] = {}
    seeds: int | list[int] = 1
    sample: Literal["grid", "halton"] = "grid"
    n_trials: int | None = Field(default=None, ge=1)
    sample_seed: int = Field(default=0, ge=0)
    assignments: list[str] = []
    tiny: bool = False
    config_file: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if "seed" in self.axes:
            raise ValueError("sweep seeds with --seeds N (or a list), not an axis named 'seed'")
        for key, axis in self.axes.items():
            if isinstance(axis, list) and not axis:
                raise ValueError(f"{_flag_for(key)} has no values")
        if isinstance(self.seeds, int) and self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        if isinstance(self.seeds, list) and (
            not self.seeds
            or any(s < 0 for s in self.seeds)
            or len(set(self.seeds)) < len(self.seeds)
        ):
            raise ValueError(f"--seeds list must be distinct seeds >= 0, got {self.seeds}")
        if self.sample == "halton":
            if self.n_trials is None:
                raise ValueError("--sample halton needs --trials N (the number of points)")
            if not self.axes:
                raise ValueError("--sample halton needs at least one axis (e.g. --lr 1e-4:1e-1)")
        elif self.n_trials is not None:
            raise ValueError(
                "--trials only applies with --sample halton; a grid's size is "
                "the product of its axes"
            )
        return self

    @classmethod
    def create(cls, **values: Any) -> SweepSpec:
        """Construct, turning a validation problem into one ConfigError line."""
        try:
            return cls(**values)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            prefix = f"sweep spec {where}: " if where else "sweep spec: "
            raise ConfigError(prefix + message, field=where or "sweep") from None

    def seed_values(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def points(self) -> list[dict[str, Any]]:
        """The hyperparameter points (without seeds), in a fixed order."""
        if self.sample == "grid":
            keys = list(self.axes)
            columns = [
                axis.grid(_flag_for(k)) if isinstance(axis, RangeSpec) else list(axis)
                for k, axis in self.axes.items()
            ]
            return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*columns)]
        from scipy.stats import qmc

        assert self.n_trials is not None
        sampler = qmc.Halton(d=len(self.axes), scramble=True, seed=self.sample_seed)
        unit = sampler.random(self.n_trials)
        points = []
        for row in unit:
            point = {}
            for u, (key, axis) in zip(row, self.axes.items(), strict=True):
                if isinstance(axis, RangeSpec):
                    point[key] = axis.at(float(u))  # log-uniform
                else:
                    point[key] = axis[min(int(u * len(axis)), len(axis) - 1)]
            points.append(point)
        return points

    def trials(self) -> list[dict[str, Any]]:
        """Every trial's dotted-key assignments, seed included; seeds outermost so that a
        partial sweep has seen every point once before it repeats any."""
        points = self.points()
        return [{**point, "seed": seed} for seed in self.seed_values() for point in points]

    def canonical(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def identity(self) -> str:
        """Hash of the canonical spec (and the config file's bytes): same command, same sweep."""
        payload: dict[str, Any] = {"format": SPEC_FORMAT, "spec": self.canonical()}
        if self.config_file is not None:
            path = Path(self.config_file)
            if not path.is_file():
                raise ConfigError(
                    f"config file {self.config_file!r} not found; pass an existing --config file",
                    field="config",
                )
            payload["config_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _base_tree(spec: SweepSpec) -> dict[str, Any]:
    """The resolved config every trial starts from (recipe <- file <- --set), so workers
    never re-read the config file and a sweep stays what it was when it was created."""
    from wdlab.config import build_config

    tree = build_config(
        spec.workload, file=spec.config_file, assignments=list(spec.assignments), tiny=spec.tiny
    ).to_dict()
    if tree["train"].get("checkpoint_every") is None:
        # Checkpoint at every evaluation so a killed trial resumes instead of starting over.
        tree["train"]["checkpoint_every"] = tree["train"]["eval_every"]
    return tree


def trial_config(base: dict[str, Any], params: dict[str, Any], name: str) -> Any:
    """The validated RunConfig of one trial."""
    import copy

    from wdlab.config import set_dotted, switch_optimizer, validate

    tree = copy.deepcopy(base)
    if "optimizer.name" in params:  # another optimizer: the recipe's AdamW betas do not apply
        tree = switch_optimizer(tree, params["optimizer.name"])
    for key, value in params.items():
        set_dotted(tree, key, value)
    tree["name"] = name
    return validate(tree)


def _run_name(sweep_name: str, index: int) -> str:
    return f"{sweep_name}-t{index}"


def find_or_create_sweep(store: Store, spec: SweepSpec) -> tuple[str, bool]:
    """The id of the sweep with this spec's identity (created with its trials if new) and
    whether it was created now. Every trial's config is validated before anything runs."""
    ident = spec.identity()
    for record in store.list_sweeps():
        if record.spec.get("identity") == ident:
            return record.id, False
    name = spec.name or f"{spec.workload}-{ident[:8]}"
    for record in store.list_sweeps():
        if record.name == name:
            raise ConfigError(
                f"sweep name {name!r} is already used by a different sweep in {store.path}; "
                "pick another --name (or repeat that sweep's exact command to resume it)",
                field="name",
            )
    base = _base_tree(spec)
    params = spec.trials()
    for index, trial in enumerate(params):
        trial_config(base, trial, _run_name(name, index))  # fail now, in one line, if invalid
    stored = {
        "format": SPEC_FORMAT,
        "identity": ident,
        "spec": spec.canonical(),
        "base_config": base,
    }
    return store.create_sweep(spec=stored, name=name, trials=params), True


# --------------------------------------------------------------------------- recovery


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _owner_dead(worker: str | None) -> bool:
    """True when `worker` ran on this host and its process is gone."""
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
        if _owner_dead(owner) and store.requeue_trial(sweep_id, trial.trial_index, owner):
            indices.append(trial.trial_index)
    indices += store.requeue_stale_trials(sweep_id, older_than=stale_seconds)
    return sorted(indices)


# --------------------------------------------------------------------------- the worker


class _TrialStore:
    """The worker's store as train.run sees it: new runs belong to the sweep and are linked
    to the trial the moment they exist, so a crash right after still knows the run."""

    def __init__(self, store: Store, sweep_id: str, index: int, worker: str) -> None:
        self._store, self._sweep_id, self._index, self._worker = store, sweep_id, index, worker
        self.run_id: str | None = None

    def create_run(self, **kwargs: Any) -> str:
        run_id = self._store.create_run(**kwargs, sweep_id=self._sweep_id)
        self.run_id = run_id
        self._store.heartbeat_trial(self._sweep_id, self._index, self._worker, run_id=run_id)
        return run_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class _Heartbeat(threading.Thread):
    """Beats for the current trial; exits the process when the parent that spawned this
    local worker is gone (SIGKILL of `wdlab sweep` must not leave trainers running)."""

    def __init__(self, store: Store, sweep_id: str, worker: str, parent_pid: int | None) -> None:
        super().__init__(daemon=True, name="wdlab-heartbeat")
        self.store, self.sweep_id, self.worker, self.parent_pid = (
            store,
            sweep_id,
            worker,
            parent_pid,
        )
        self.current: int | None = None
        self.lost = False
        self.stopped = threading.Event()

    def orphaned(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

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
                    if not self.store.heartbeat_trial(self.sweep_id, index, self.worker):
                        self.lost = True
                except Exception:  # a busy store: try again next beat
                    pass


def _result_status(run_status: str) -> str:
    return {"finished": "finished", "diverged": "diverged"}.get(run_status, "failed")


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    body = text[0] if text else ""
    return body if isinstance(err, WdlabError) else f"{type(err).__name__}: {body}"


def _run_trial(
    store: Store,
    trial: TrialRecord,
    worker: str,
    base: dict[str, Any],
    sweep_name: str,
    runs_root: Path,
    beat: _Heartbeat,
) -> bool:
    """Train one claimed trial and record its outcome. False when interrupted (Ctrl-C): the
    trial went back to pending and the worker should stop."""
    from wdlab import train

    sweep_id, index = trial.sweep_id, trial.trial_index
    name = _run_name(sweep_name, index)
    proxy = _TrialStore(store, sweep_id, index, worker)
    try:
        resume_id = None
        if trial.run_id is not None:
            try:
                previous = store.get_run(trial.run_id)
            except WdlabError:
                previous = None
            if previous is not None and previous.status in ("finished", "diverged"):
                # Trained to the end before the crash, only the trial row was not updated.
                store.finish_trial(sweep_id, index, status=previous.status, run_id=previous.id)
                return True
            if previous is not None and (runs_root / previous.id / "last.pt").is_file():
                resume_id = previous.id
            elif previous is not None:
                store.delete_run(previous.id)  # killed before its first checkpoint
        if resume_id is None:
            for run in store.list_runs(sweep_id=sweep_id):  # created, then killed before linking
                if run.name == name and run.status in ("created", "running"):
                    store.delete_run(run.id)
        config = trial_config(base, trial.params, name)
        if resume_id is not None:
            proxy.run_id = resume_id
        result = train.run(config, proxy, runs_root, resume_id=resume_id)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        store.requeue_trial(sweep_id, index, worker)
        return False
    except Exception as err:  # a failing trial is a result; it never stops the others
        if not beat.lost:
            store.finish_trial(
                sweep_id, index, status="failed", run_id=proxy.run_id, error=_one_line(err)
            )
        return True
    if result.status == "interrupted":
        store.requeue_trial(sweep_id, index, worker)
        return False
    if not beat.lost:  # someone else took the trial over; its outcome is theirs to record
        status = _result_status(result.status)
        error = (result.message or None) if status != "finished" else None
        store.finish_trial(sweep_id, index, status=status, run_id=result.run_id, error=error)
    return True


def _worker_loop(
    store_path: str,
    sweep_id: str,
    runs_root: str,
    threads: int,
    parent_pid: int | None,
    on_trial: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> bool:
    """Claim and train trials until none is pending; False when stopped by Ctrl-C. Runs in
    a spawned process, a Ray task, or (one local worker) the sweep's own process: the same
    code every way, so every way gives the same results."""
    import torch

    torch.set_num_threads(threads)
    worker = _worker_id()
    interrupted = False
    with Store(store_path) as store:
        record = store.get_sweep(sweep_id)
        base, sweep_name = record.spec["base_config"], record.name
        beat = _Heartbeat(store, sweep_id, worker, parent_pid)
        beat.start()
        try:
            while not beat.orphaned() and not (stop is not None and stop.is_set()):
                try:
                    trial = store.claim_trial(sweep_id, worker)
                except KeyboardInterrupt:
                    interrupted = True
                    break
                if trial is None:
                    break
                beat.current, beat.lost = trial.trial_index, False
                try:
                    carry_on = _run_trial(
                        store, trial, worker, base, sweep_name, Path(runs_root), beat
                    )
                except KeyboardInterrupt:
                    store.requeue_trial(sweep_id, trial.trial_index, worker)
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


def _local_worker_main(
    store_path: str, sweep_id: str, runs_root: str, threads: int, parent_pid: int
) -> None:
    # Before torch is imported: size OpenMP's pool too, not only torch's intra-op threads
    # (Ray does the same for its workers), so 2 workers on 2 cores do not oversubscribe.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    _worker_loop(store_path, sweep_id, runs_root, threads, parent_pid)


# --------------------------------------------------------------------------- executors


class _InlineExecutor:
    """One local worker: train in this process (no second torch import, Ctrl-C as usual)."""

    def __init__(self, args: tuple[Any, ...], on_trial: Callable[[], None]) -> None:
        self.args, self.on_trial = args, on_trial

    def start(self, n: int) -> None:
        import torch

        threads = torch.get_num_threads()
        try:
            completed = _worker_loop(*self.args, None, self.on_trial)
        finally:
            torch.set_num_threads(threads)
        if not completed:
            raise KeyboardInterrupt

    def alive(self) -> int:
        return 0

    def close(self, timeout: float = 30.0) -> None:
        pass


class _LocalExecutor:
    """One worker on a thread of the sweep's own process, the rest in processes from the
    'spawn' context (no forked torch or SQLite state).

    Why the thread: a spawned worker spends seconds importing torch before its first trial;
    the thread starts training at once (torch is already imported here), so those seconds
    are not lost. Trials run the same code on either, so results do not depend on where a
    trial ran. Ctrl-C reaches the main thread (the dispatcher); the thread's trial is then
    left 'running' and recovered like a dead worker's when the sweep resumes.
    """

    def __init__(self, args: tuple[Any, ...]) -> None:
        import multiprocessing

        import torch

        self.ctx = multiprocessing.get_context("spawn")
        self.args = args
        self.procs: list[Any] = []
        self.crashes = 0
        self.last_exitcode: int | None = None
        self.thread: threading.Thread | None = None
        self.thread_error: BaseException | None = None
        self.stop = threading.Event()
        self.torch_threads = torch.get_num_threads()

    def _thread_main(self) -> None:
        try:
            _worker_loop(*self.args, None, stop=self.stop)
        except BaseException as err:  # re-raised by alive() in the dispatcher
            self.thread_error = err

    def start(self, n: int) -> None:
        if n > 0 and (self.thread is None or not self.thread.is_alive()):
            self.thread = threading.Thread(
                target=self._thread_main, daemon=True, name="wdlab-sweep-worker"
            )
            self.thread.start()
            n -= 1
        for _ in range(n):
            proc = self.ctx.Process(
                target=_local_worker_main, args=(*self.args, os.getpid()), daemon=True
            )
            proc.start()
            self.procs.append(proc)

    def alive(self) -> int:
        if self.thread_error is not None:
            error, self.thread_error = self.thread_error, None
            raise error
        running = []
        for proc in self.procs:
            if proc.is_alive():
                running.append(proc)
            elif proc.exitcode != 0:
                self.crashes += 1
                self.last_exitcode = proc.exitcode
        self.procs = running
        threads = self.thread is not None and self.thread.is_alive()
        if self.crashes > MAX_WORKER_CRASHES:
            raise WdlabError(
                f"sweep workers crashed {self.crashes} times (last exit code "
                f"{self.last_exitcode}); run one trial with `wdlab run` to see why (a script "
                "must call run_sweep under `if __name__ == '__main__':`)",
                field="workers",
            )
        return len(self.procs) + threads

    def close(self, timeout: float = 30.0) -> None:
        import torch

        self.stop.set()  # the thread takes no new trial; a trial in flight stays 'running'
        torch.set_num_threads(self.torch_threads)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            proc.join(max(deadline - time.monotonic(), 0.1))
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise WdlabError(
            "the ray backend needs Ray: pip install wdlab[ray] (or use --backend local)",
            field="backend",
        ) from None
    return ray


class _RayExecutor:
    """The same worker loop as Ray tasks. The store path must be reachable from every node
    (one machine, or a shared filesystem that supports SQLite locking)."""

    def __init__(self, args: tuple[Any, ...], workers: int, address: str | None) -> None:
        ray = _import_ray()
        self.ray, self.args, self.refs = ray, args, []
        self.owned = False
        if not ray.is_initialized():
            try:
                if address is None:
                    ray.init(num_cpus=workers or 2, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                raise WdlabError(
                    f"cannot start or reach {where}: {str(err).splitlines()[0]}; check "
                    "--address (or start one with `ray start --head`)",
                    field="address",
                ) from None
            self.owned = True
        self.task = ray.remote(num_cpus=1, max_retries=0)(_worker_loop)

    def start(self, n: int) -> None:
        self.refs += [self.task.remote(*self.args, None) for _ in range(n)]

    def alive(self) -> int:
        if self.refs:
            ready, self.refs = self.ray.wait(self.refs, num_returns=len(self.refs), timeout=0)
            self.ray.get(ready)  # re-raise a worker's crash here
        return len(self.refs)

    def close(self, timeout: float = 30.0) -> None:
        for ref in self.refs:
            self.ray.cancel(ref)
        if self.owned:
            self.ray.shutdown()


# --------------------------------------------------------------------------- results


@dataclass
class TrialResult:
    """One trial as a table row."""

    index: int
    params: dict[str, Any]
    status: str
    metric: str | None = None
    final: float | None = None
    reached: bool | None = None
    steps_to_target: int | None = None
    seconds_to_target: float | None = None
    run_id: str | None = None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        return {
            "trial": self.index,
            **self.params,
            "status": self.status,
            self.metric or "metric": self.final,
            "reached": self.reached,
            "steps_to_target": self.steps_to_target,
            "seconds_to_target": self.seconds_to_target,
            "run": self.run_id,
            "error": self.error,
        }


@dataclass
class SweepSummary:
    sweep_id: str
    name: str
    counts: dict[str, int]
    wall_seconds: float
    trials: list[TrialResult] = field(default_factory=list)
    created: bool = False  # False: an existing sweep was resumed

    def rows(self) -> list[dict[str, Any]]:
        return [t.row() for t in self.trials]


def _counts(store: Store, sweep_id: str) -> dict[str, int]:
    counts = Counter(t.status for t in store.trials(sweep_id))
    return {s: counts.get(s, 0) for s in ("pending", "running", "finished", "diverged", "failed")}


def summarize(store: Store, sweep_id: str, wall_seconds: float = 0.0) -> SweepSummary:
    """A sweep's trials with their runs' results, from the store alone."""
    from wdlab import workloads

    record = store.get_sweep(sweep_id)
    metric = workloads.get(record.spec["spec"]["workload"]).metric  # failed trials too
    results = []
    for trial in store.trials(sweep_id):
        row = TrialResult(
            trial.trial_index,
            trial.params,
            trial.status,
            metric=metric,
            run_id=trial.run_id,
            error=trial.error,
        )
        if trial.run_id is not None:
            try:
                summary = store.get_run(trial.run_id).result or {}
            except WdlabError:
                summary = {}
            row.final = summary.get("final_metrics", {}).get(metric)
            row.reached = summary.get("reached")
            row.steps_to_target = summary.get("steps_to_target")
            row.seconds_to_target = summary.get("seconds_to_target")
        results.append(row)
    return SweepSummary(sweep_id, record.name, _counts(store, sweep_id), wall_seconds, results)


# --------------------------------------------------------------------------- run_sweep


def runs_root_for(store_path: Path) -> Path:
    """Checkpoints live beside the store, one folder per run (as `wdlab run` keeps them)."""
    return Path(store_path).resolve().parent / "wdlab-runs"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run_sweep(
    spec: SweepSpec,
    store_path: Path,
    *,
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    progress: bool = True,
    on_start: Callable[[str, bool], None] | None = None,
) -> SweepSummary:
    """Run (or resume) a sweep to the end; the summary of every trial.

    `on_start(sweep_id, created)` is called once the sweep is in the store, before training.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be an integer >= 1, got {workers!r}", field="workers")
    if backend not in ("local", "ray"):
        raise ConfigError(f"--backend {backend!r} is not known; use local or ray", field="backend")
    if backend == "ray":
        _import_ray()  # fail before touching the store
    from wdlab.progress import make_progress

    start = time.perf_counter()
    store_path = Path(store_path).resolve()  # workers (Ray's too) may run in another cwd
    with Store(store_path) as store:
        sweep_id, created = find_or_create_sweep(store, spec)
        if on_start is not None:
            on_start(sweep_id, created)
        total = len(store.trials(sweep_id))
        args = (
            os.fspath(store_path),
            sweep_id,
            os.fspath(runs_root_for(store_path)),
            max(1, _cores() // workers),
        )
        bar = make_progress(
            f"sweep {store.get_sweep(sweep_id).name}", enabled=progress, unit="trial"
        )
        shown = [-1]

        def report() -> dict[str, int]:
            counts = _counts(store, sweep_id)
            done = counts["finished"] + counts["diverged"] + counts["failed"]
            if bar is not None and done != shown[0]:
                ended = ("finished", "diverged", "failed")
                bar.update(done, {k: float(counts[k]) for k in ended if counts[k]})
                shown[0] = done
            return counts

        executor: Any
        if backend == "ray":
            executor = _RayExecutor(args, workers, address)
        elif workers == 1:
            executor = _InlineExecutor(args, report)
        else:
            executor = _LocalExecutor(args)
        store.update_sweep(sweep_id, status="running")
        try:
            if bar is not None:
                pending = _counts(store, sweep_id)
                bar.start(total, total - pending["pending"] - pending["running"])
            _dispatch(store, sweep_id, executor, workers, report)
        except KeyboardInterrupt:
            executor.close()
            store.update_sweep(sweep_id, status="interrupted")
            raise
        except BaseException:
            executor.close(timeout=5.0)
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


def _dispatch(
    store: Store, sweep_id: str, executor: Any, workers: int, report: Callable[[], dict[str, int]]
) -> None:
    """Keep up to `workers` workers busy until every trial has ended; recover dead ones."""
    last_recover = -math.inf
    while True:
        if time.monotonic() - last_recover >= RECOVER_SECONDS:
            recover_trials(store, sweep_id)
            last_recover = time.monotonic()
        counts = report()
        alive = executor.alive()
        if counts["pending"] and alive < workers:
            executor.start(min(workers - alive, counts["pending"]))
            continue
        if not counts["pending"] and not counts["running"] and alive == 0:
            return
        time.sleep(0.5)


# --------------------------------------------------------------------------- CLI glue


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `wdlab sweep` options (the CLI adds --store itself or calls this with it)."""
    p.add_argument("workload", help="grokking | charlm | digits | teacher")
    p.add_argument("--optimizer", metavar="NAMES", help="optimizers to sweep, e.g. adamw,lion")
    p.add_argument("--lr", metavar="AXIS", help="lo:hi:n (log-spaced) or a list, e.g. 1e-4:1e-1:7")
    p.add_argument("--wd", metavar="AXIS", help="weight decays, e.g. 0,0.01,0.1")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=AXIS",
        help="any setting as an axis, e.g. --grid model.width=32,64 (repeatable)",
    )
    p.add_argument(
        "--seeds",
        default="1",
        metavar="N|LIST",
        help="N seeds 0..N-1, or a list such as 0,5,7; one seed s alone: 's,' (default 1)",
    )
    p.add_argument("--sample", choices=["grid", "halton"], default="grid")
    p.add_argument("--trials", type=int, metavar="N", help="number of Halton points")
    p.add_argument(
        "--sample-seed",
        type=int,
        default=0,
        dest="sample_seed",
        help="scrambling seed of the Halton sequence",
    )
    p.add_argument("--steps", type=int, help="step budget of every trial")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a fixed setting for every trial (repeatable)",
    )
    p.add_argument("--config", help="TOML file with base settings")
    p.add_argument("--tiny", action="store_true", help="the workload's tiny test configuration")
    p.add_argument("--name", help="a name for the sweep")
    p.add_argument("--workers", type=int, default=1, help="trials trained at once")
    p.add_argument("--backend", choices=["local", "ray"], default="local")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def _parse_seeds(text: str) -> int | list[int]:
    """'3' is a count (seeds 0, 1, 2); '0,5,7' a list; '5,' the list of one seed, 5."""
    text = str(text).strip()
    one_listed = text.endswith(",") and text.count(",") == 1
    value = parse_axis(text.rstrip(",") if one_listed else text, flag="--seeds")
    if isinstance(value, RangeSpec) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError(f"--seeds {text!r}: give a count (3) or a list (0,5,7)", field="--seeds")
    return value[0] if len(value) == 1 and not one_listed else value


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    """A SweepSpec from parsed `wdlab sweep` arguments."""
    axes: dict[str, Axis] = {}
    for flag, key in FLAG_KEYS.items():
        text = getattr(args, flag.lstrip("-"))
        if text is not None:
            axes[key] = parse_axis(text, flag=flag)
    for item in args.grid:
        key, axis = parse_grid(item)
        if key in axes:
            raise ConfigError(
                f"--grid {key} is given twice (or also by its own flag)", field="--grid"
            )
        axes[key] = axis
    assignments = list(args.set)
    if args.steps is not None:
        assignments.insert(0, f"steps={args.steps}")
    return SweepSpec.create(
        workload=args.workload,
        axes=axes,
        seeds=_parse_seeds(args.seeds),
        sample=args.sample,
        n_trials=args.trials,
        sample_seed=args.sample_seed,
        assignments=assignments,
        tiny=args.tiny,
        config_file=args.config,
        name=args.name,
    )


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_summary(summary: SweepSummary, stream: Any = None) -> None:
    """The trials as a table (rich on a terminal, aligned text elsewhere) and the counts."""
    stream = stream or sys.stdout
    rows = summary.rows()
    columns = list(dict.fromkeys(k for r in rows for k in r if k != "error"))
    if any(r["error"] for r in rows):
        columns.append("error")
    counts = ", ".join(f"{k} {v}" for k, v in summary.counts.items() if v)
    verb = "created" if summary.created else "resumed"
    title = (
        f"sweep {summary.name} ({summary.sweep_id}, {verb}): {counts}; {summary.wall_seconds:.1f} s"
    )
    if stream.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for c in columns:
            table.add_column(c)
        for r in rows:
            table.add_row(*(_format(r.get(c)) for c in columns))
        Console(file=stream).print(table)
        return
    cells = [[_format(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print(title, file=stream)
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)), file=stream)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)), file=stream)


def sweep_main(args: argparse.Namespace) -> int:
    """`wdlab sweep`: build the spec, run or resume it, print the table. Exit 0 when every
    trial ended (failed trials are results too, listed with their error)."""
    spec = spec_from_args(args)
    summary = run_sweep(
        spec,
        Path(getattr(args, "store", "wdlab.db")),
        workers=args.workers,
        backend=args.backend,
        address=args.address,
        progress=not args.quiet,
    )
    print_summary(summary)
    return 0
