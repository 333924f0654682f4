"""A Ray worker's end of a sweep: it never opens the store.

Everything a worker would write (trial claims, heartbeats, results, the run's record and
metrics) goes as messages to the sweep's driver, the store's one writer (wdlab.sweep.driver),
through one small actor, the Mailbox, placed on the driver's node. Why: a Ray node need not
see the store's file at all (and SQLite on a network filesystem does not lock reliably), and
one writer cannot race itself. Checkpoints are the one thing workers write themselves, into
the sweep's checkpoint directory, which every node must reach (a shared filesystem).

Messages are batched: a run's metric rows, lease beats and updates wait in the worker's
buffer and go as one actor call every BATCH_ROWS rows or BATCH_SECONDS; a call that needs an
answer (create_run, claim, flush, ...) takes the buffer along. `flush()` keeps the store's
meaning, the commit point: it returns once the driver has committed every row sent so far,
and the training loop calls it right before it writes a checkpoint.

Each message carries its sender's sequence number, so the driver applies one worker's
messages in the order they were made even if the actor calls arrive out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wdlab.errors import WdlabError
from wdlab.store import DriverTrialQueue, RunBusyError, TrialRecord
from wdlab.sweep.worker import (
    DriverGone,
    Job,
    owner_dead,
    pass_stop_on,
    pin_thread,
    thread_cpus,
    worker_loop,
)

# Metric rows a worker buffers before it sends them without being asked, or this long after
# its last send. At 256 rows a teacher worker (3 rows a step, ~370 steps/s) sent 4 actor
# calls a second, each waking the driver, the Mailbox and the raylet on the cores the
# workers train on; at 2048 it sends about once per BATCH_SECONDS.
BATCH_ROWS = 2048
BATCH_SECONDS = 1.0
REACH_FILE = ".wdlab-driver-{nonce}"  # the driver writes it into the checkpoint directory

# Errors the driver raised on a worker's behalf come back by class name and are raised again.
_ERRORS: dict[str, type[Exception]] = {"RunBusyError": RunBusyError}


class Mailbox:
    """The actor between workers and the driver (async: a waiting worker holds no thread).

    post() queues a worker's messages and, when asked, waits for the driver's answer;
    take() hands the driver what has arrived (waiting up to `timeout` for something);
    answer() wakes the waiting workers. Every answer also says whether the sweep is
    stopping (Ctrl-C on the driver), which is how workers learn it. Every method is a
    coroutine, so all of them run on the actor's one event loop (futures are not
    thread-safe)."""

    def __init__(self) -> None:
        self.inbox: list[tuple[str, int, list[tuple[str, dict[str, Any]]], bool]] = []
        self.arrived = asyncio.Event()
        self.waiting: dict[tuple[str, int], asyncio.Future[Any]] = {}
        self.stopping = False

    async def post(
        self, token: str, seq: int, messages: list[tuple[str, dict[str, Any]]], wait: bool
    ) -> Any:
        self.inbox.append((token, seq, messages, wait))
        self.arrived.set()
        if not wait:
            return None
        future = asyncio.get_running_loop().create_future()
        self.waiting[(token, seq)] = future
        reply = await future
        return {**reply, "stop": self.stopping}

    async def take(self, timeout: float) -> list[Any]:
        if not self.inbox:
            self.arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), timeout)
        taken, self.inbox = self.inbox, []
        return taken

    async def answer(self, replies: dict[tuple[str, int], dict[str, Any]]) -> None:
        for key, reply in replies.items():
            future = self.waiting.pop(key, None)
            if future is not None and not future.done():
                future.set_result(reply)

    async def stop(self) -> None:
        self.stopping = True


class DriverChannel:
    """A worker's line to the driver: buffered posts and calls that wait for an answer.

    Thread-safe (the heartbeat thread calls too): sequence numbers are drawn and actor calls
    submitted under one lock, so their order is the order the driver applies them in."""

    def __init__(self, ray: Any, mailbox: Any, token: str) -> None:
        self.ray, self.mailbox, self.token = ray, mailbox, token
        self.lock = threading.Lock()
        self.seq = 0
        self.buffer: list[tuple[str, dict[str, Any]]] = []
        self.rows = 0
        self.last_send = time.monotonic()
        self.stop = threading.Event()  # set when an answer says the sweep is stopping
        self.gone = False

    def _submit(self, wait: bool) -> Any:
        messages, self.buffer, self.rows = self.buffer, [], 0
        self.last_send = time.monotonic()
        ref = self.mailbox.post.remote(self.token, self.seq, messages, wait)
        self.seq += 1
        return ref

    def post(self, method: str, kwargs: dict[str, Any], rows: int = 0) -> None:
        """Queue a message that needs no answer; send the batch when it is due."""
        with self.lock:
            self.buffer.append((method, kwargs))
            self.rows += rows
            due = self.rows >= BATCH_ROWS or time.monotonic() - self.last_send >= BATCH_SECONDS
            if due and not self.gone:
                self._submit(wait=False)

    def call(self, method: str, kwargs: dict[str, Any]) -> Any:
        """Send the buffer and this request; the driver's answer (its error raised here)."""
        if self.gone:
            raise DriverGone("the sweep's driver is gone")
        with self.lock:
            self.buffer.append((method, kwargs))
            ref = self._submit(wait=True)
        try:
            reply = self.ray.get(ref)
        except Exception as err:  # the actor died with its driver (or its node)
            self.gone = True
            raise DriverGone(f"the sweep's driver is gone ({type(err).__name__})") from None
        if reply.get("stop"):
            self.stop.set()
        error = reply.get("error")
        if error is not None:
            kind, text, field = error
            raise _ERRORS.get(kind, WdlabError)(text, field=field)
        return reply.get("value")


class RemoteSink:
    """The RunSink (wdlab.train) of a trial on a Ray worker: every write goes to the driver,
    batched; the calls that must answer (create_run, get_run, claim_run, truncate_metrics,
    flush) wait for it. A stop request from the driver is handed on to train.run at the next
    metric row, as the local workers' sink does."""

    def __init__(self, channel: DriverChannel, trial: int, worker: str) -> None:
        self.channel, self.trial, self.worker = channel, trial, worker
        self.run_id: str | None = None
        self._passed_on = False

    def create_run(self, **kwargs: Any) -> str:
        run_id = self.channel.call(
            "create_run", {**kwargs, "trial": self.trial, "worker": self.worker}
        )
        self.run_id = run_id
        return str(run_id)

    def get_run(self, ref: str) -> Any:
        return self.channel.call("get_run", {"ref": ref})

    def claim_run(self, run_id: str, owner: str) -> None:
        self.channel.call("claim_run", {"run_id": run_id, "owner": owner})

    def heartbeat_run(self, run_id: str, owner: str) -> bool:
        self.channel.post("heartbeat_run", {"run_id": run_id, "owner": owner})
        return True

    def update_run(self, run_id: str, **fields: Any) -> None:
        self.channel.post("update_run", {"run_id": run_id, **fields})

    def log_metrics(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        rows = {}
        for key, value in metrics.items():
            try:
                rows[key] = float(value)
            except (TypeError, ValueError):
                raise WdlabError(
                    f"metric {key!r} must be a number, got {value!r}", field="metrics"
                ) from None
        # NaN travels as None (pickled floats would do too; this keeps rows plain JSON-like).
        clean = {k: (None if math.isnan(v) else v) for k, v in rows.items()}
        self.channel.post(
            "log_metrics", {"run_id": run_id, "step": int(step), "metrics": clean}, len(clean)
        )
        self._passed_on = pass_stop_on(self.channel.stop, self._passed_on)

    def truncate_metrics(self, run_id: str, after_step: int) -> int:
        kwargs = {"run_id": run_id, "after_step": after_step}
        return int(self.channel.call("truncate_metrics", kwargs))

    def flush(self) -> None:
        self.channel.call("flush", {})


class DriverLink:
    """A Ray worker's TrialLink: queue, trial start and run sink, all through the driver."""

    def __init__(self, channel: DriverChannel, sweep_id: str) -> None:
        self.channel = channel
        self.queue = DriverTrialQueue(sweep_id, channel.call)

    def begin(self, trial: TrialRecord, name: str) -> tuple[bool, str | None]:
        ended, resume_id = self.channel.call("begin", {"index": trial.trial_index, "name": name})
        return bool(ended), resume_id

    def sink(self, trial: TrialRecord, worker: str, stop: Any) -> RemoteSink:
        return RemoteSink(self.channel, trial.trial_index, worker)


def unreachable_message(runs_root: str, node: str) -> str:
    return (
        f"the checkpoint directory {runs_root} is not reachable from Ray node {node} (a file "
        "the driver wrote there is missing): give --checkpoint-dir a directory on a "
        "filesystem every node mounts at the same path"
    )


def ray_worker(job: Job, mailbox: Any, token: str, nonce: str, driver: str) -> tuple[str, str]:
    """A Ray task: say hello, then the worker loop over the driver's link until no trial is
    pending. ("done", "") or ("unreachable", message) when this node cannot see the
    checkpoint directory (the driver ends the sweep with that message). `driver` is the
    driver's host:pid: a task on the driver's host also stops within a heartbeat of the
    driver's death, before Ray itself notices."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if not (Path(job.runs_root) / REACH_FILE.format(nonce=nonce)).is_file():
        return "unreachable", unreachable_message(job.runs_root, node[:12])
    channel = DriverChannel(ray, mailbox, token)
    channel.call("hello", {"pid": os.getpid(), "node": node})
    link = DriverLink(channel, job.sweep_id)
    every_cpu = thread_cpus()
    pin_thread(job.cpus)  # a Ray worker process serves later tasks too: put it back afterwards
    try:
        with contextlib.suppress(DriverGone):
            worker_loop(
                job,
                link=link,
                orphaned=lambda: channel.gone or owner_dead(driver),
                stop=channel.stop,
            )
    finally:
        if job.cpus is not None:
            pin_thread(every_cpu)
    return "done", ""
