"""The driver's side of a Ray sweep: the store's one writer, answering its workers.

Ray workers (wdlab.sweep.remote) send every claim, heartbeat, result, run record and metric
row here as messages; the driver applies them to the store in each worker's own order and
answers the ones that wait. It also knows which trial and which run lease each worker holds,
so when Ray reports a worker lost (its node died, its process crashed, the task was killed)
the driver puts the trial back and releases the lease at once, instead of waiting for a
stale heartbeat; anything that worker still had in flight is dropped, which loses nothing:
the rows it had not flushed lie past its last checkpoint and are trained and logged again.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

from wdlab.errors import WdlabError
from wdlab.store import Store, serve_queue_call
from wdlab.store.queue import QUEUE_CALLS
from wdlab.sweep.worker import one_line, prepare_trial

# RunSink calls a worker's RemoteSink forwards, applied to the store as they are.
SINK_CALLS = ("get_run", "claim_run", "heartbeat_run", "update_run", "truncate_metrics", "flush")

Message = tuple[str, dict[str, Any]]


class Driver:
    """Applies Ray workers' messages to the store (see the module docstring)."""

    def __init__(self, store: Store, sweep_id: str, runs_root: Path) -> None:
        self.store, self.sweep_id, self.runs_root = store, sweep_id, runs_root
        self.queue = store.trial_queue(sweep_id)
        self.next_seq: dict[str, int] = {}
        self.held: dict[str, dict[int, tuple[list[Message], bool]]] = {}
        self.workers: dict[str, str] = {}  # token -> the worker id it claims trials as
        self.leases: dict[str, tuple[str, str]] = {}  # token -> (run id, lease owner)
        self.greeted: set[str] = set()
        self.lost: set[str] = set()
        self.deferred: dict[str, tuple[str, str, str | None]] = {}

    # ----------------------------------------------------------------- messages

    def handle(self, taken: list[Any]) -> dict[tuple[str, int], dict[str, Any]]:
        """Apply what the mailbox handed over; the answers to the posts that wait."""
        replies: dict[tuple[str, int], dict[str, Any]] = {}
        for token, seq, messages, wait in taken:
            if token in self.lost:
                if wait:
                    replies[(token, seq)] = {"error": ("WdlabError", "worker was lost", None)}
                continue
            held = self.held.setdefault(token, {})
            held[seq] = (messages, wait)
            n = self.next_seq.get(token, 0)
            while n in held:
                batch, waits = held.pop(n)
                reply = self._apply(token, batch, waits)
                if waits:
                    replies[(token, n)] = reply
                n += 1
            self.next_seq[token] = n
        return replies

    def _apply(self, token: str, messages: list[Message], wait: bool) -> dict[str, Any]:
        value, error = None, None
        for method, kwargs in messages:
            try:
                value = self._one(token, method, dict(kwargs))
            except WdlabError as err:
                error = error or (type(err).__name__, one_line(err), err.field)
            except Exception as err:  # noqa: BLE001 - the worker's trial fails with it
                error = error or ("WdlabError", one_line(err), None)
        if not wait:
            if error is not None:
                self.deferred.setdefault(token, error)  # raised at the worker's next call
            return {}
        error = self.deferred.pop(token, None) or error
        return {"value": value, "error": error}

    def _one(self, token: str, method: str, kwargs: dict[str, Any]) -> Any:
        store = self.store
        if method == "hello":
            self.greeted.add(token)
            return None
        if method in QUEUE_CALLS:
            if method == "claim":
                self.workers[token] = kwargs["worker"]
            return serve_queue_call(self.queue, method, kwargs)
        if method == "begin":
            return self._begin(int(kwargs["index"]), str(kwargs["name"]))
        if method == "create_run":
            trial, worker = kwargs.pop("trial"), kwargs.pop("worker")
            run_id = store.create_run(**kwargs, sweep_id=self.sweep_id)
            store.heartbeat_trial(self.sweep_id, trial, worker, run_id=run_id)
            return run_id
        if method == "log_metrics":
            metrics = {k: (math.nan if v is None else v) for k, v in kwargs["metrics"].items()}
            return store.log_metrics(kwargs["run_id"], kwargs["step"], metrics)
        if method in SINK_CALLS:
            if method == "claim_run":
                store.claim_run(**kwargs)
                self.leases[token] = (kwargs["run_id"], kwargs["owner"])
                return None
            return getattr(store, method)(**kwargs)
        raise WdlabError(f"unknown message {method!r} from a sweep worker", field="method")

    def _begin(self, index: int, name: str) -> tuple[bool, str | None]:
        """prepare_trial on the driver's store. The run to resume is claimed by whoever held
        it no longer: the queue gave this trial out, so its last worker is dead or requeued,
        even one on another host whose lease would look alive for minutes yet."""
        trial = next(t for t in self.store.trials(self.sweep_id) if t.trial_index == index)
        ended, resume_id = prepare_trial(self.store, trial, self.runs_root, name)
        if resume_id is not None:
            owner = self.store.get_run(resume_id).owner
            ours = {lease for _, lease in self.leases.values()}
            if owner and owner not in ours:
                self.store.update_run(resume_id, release=owner)
        return ended, resume_id

    # ----------------------------------------------------------------- lost workers

    def forget(self, token: str) -> list[int]:
        """A worker's task ended (cleanly or not): drop what it still sends, put back the
        trial it held and release its run's lease; the indices put back."""
        self.lost.add(token)
        self.held.pop(token, None)
        self.deferred.pop(token, None)
        requeued = []
        worker = self.workers.pop(token, None)
        if worker is not None:
            for trial in self.store.trials(self.sweep_id, status="running"):
                if trial.worker == worker and self.store.requeue_trial(
                    self.sweep_id, trial.trial_index, worker
                ):
                    requeued.append(trial.trial_index)
        lease = self.leases.pop(token, None)
        if lease is not None:
            run_id, owner = lease
            # The run may have been deleted meanwhile (killed before its first checkpoint).
            with contextlib.suppress(WdlabError):
                self.store.update_run(run_id, release=owner)
        return requeued
