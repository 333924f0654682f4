"""Sweeps and their trial queue.

The queue is what sweep workers pull from: claim the lowest pending trial, heartbeat while
training it, finish it, or put it back. `TrialQueue` is that interface for one sweep;
`SQLiteTrialQueue` implements it on the store (every call one transaction), and
`DriverTrialQueue` for a worker that cannot reach the store (a Ray node): each call goes to
the sweep's driver, the store's one writer, which answers it with its SQLiteTrialQueue
(`serve_queue_call`). Why workers pull: the queue is the single source of truth, so a sweep
killed at any instant loses nothing.

Sweeps are found or created in one transaction by their spec identity (a UNIQUE column),
so two identical commands started together share one sweep and train every trial once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol

from wdlab.errors import ConfigError, WdlabError
from wdlab.store import _db
from wdlab.store.records import (
    SweepRecord,
    TrialRecord,
    check_int,
    check_status,
    dumps,
    iso,
    loads,
    now,
    parse_time,
)
from wdlab.store.schema import SWEEP_STATUSES, TRIAL_STATUSES

TRIAL_END_STATUSES = ("finished", "failed", "diverged")


class TrialQueue(Protocol):
    """The trials of one sweep as a work queue (what a sweep worker needs)."""

    sweep_id: str

    def claim(self, worker: str, order: Sequence[int] | None = None) -> TrialRecord | None: ...
    def heartbeat(self, index: int, worker: str, *, run_id: str | None = None) -> bool: ...
    def finish(
        self,
        index: int,
        *,
        status: str = "finished",
        run_id: str | None = None,
        error: str | None = None,
    ) -> None: ...
    def requeue(self, index: int, worker: str | None) -> bool: ...
    def requeue_stale(self, older_than: float) -> list[int]: ...
    def trials(self, status: str | None = None) -> list[TrialRecord]: ...


class SQLiteTrialQueue:
    """TrialQueue on a Store: each call is one of the store's transactions."""

    def __init__(self, store: Any, sweep_id: str) -> None:
        self.store, self.sweep_id = store, sweep_id

    def claim(self, worker: str, order: Sequence[int] | None = None) -> TrialRecord | None:
        return self.store.claim_trial(self.sweep_id, worker, order)

    def heartbeat(self, index: int, worker: str, *, run_id: str | None = None) -> bool:
        return self.store.heartbeat_trial(self.sweep_id, index, worker, run_id=run_id)

    def finish(
        self,
        index: int,
        *,
        status: str = "finished",
        run_id: str | None = None,
        error: str | None = None,
    ) -> None:
        self.store.finish_trial(self.sweep_id, index, status=status, run_id=run_id, error=error)

    def requeue(self, index: int, worker: str | None) -> bool:
        return self.store.requeue_trial(self.sweep_id, index, worker)

    def requeue_stale(self, older_than: float) -> list[int]:
        return self.store.requeue_stale_trials(self.sweep_id, older_than)

    def trials(self, status: str | None = None) -> list[TrialRecord]:
        return self.store.trials(self.sweep_id, status)


QUEUE_CALLS = ("claim", "heartbeat", "finish", "requeue", "requeue_stale", "trials")


class DriverTrialQueue:
    """TrialQueue of a worker without the store: every call is forwarded by `call(method,
    kwargs)` (a transport, e.g. wdlab.sweep.remote's Ray mailbox) to the driver, which
    answers it with serve_queue_call on its own queue and sends the result back."""

    def __init__(self, sweep_id: str, call: Callable[[str, dict[str, Any]], Any]) -> None:
        self.sweep_id, self._call = sweep_id, call

    def claim(self, worker: str, order: Sequence[int] | None = None) -> TrialRecord | None:
        return self._call("claim", {"worker": worker, "order": list(order or ())})

    def heartbeat(self, index: int, worker: str, *, run_id: str | None = None) -> bool:
        return bool(self._call("heartbeat", {"index": index, "worker": worker, "run_id": run_id}))

    def finish(
        self,
        index: int,
        *,
        status: str = "finished",
        run_id: str | None = None,
        error: str | None = None,
    ) -> None:
        self._call("finish", {"index": index, "status": status, "run_id": run_id, "error": error})

    def requeue(self, index: int, worker: str | None) -> bool:
        return bool(self._call("requeue", {"index": index, "worker": worker}))

    def requeue_stale(self, older_than: float) -> list[int]:
        return list(self._call("requeue_stale", {"older_than": older_than}))

    def trials(self, status: str | None = None) -> list[TrialRecord]:
        return list(self._call("trials", {"status": status}))


def serve_queue_call(queue: TrialQueue, method: str, kwargs: Mapping[str, Any]) -> Any:
    """The driver's side of DriverTrialQueue: one forwarded call, answered on `queue`."""
    if method not in QUEUE_CALLS:
        raise WdlabError(f"{method!r} is not a trial queue call", field="method")
    return getattr(queue, method)(**kwargs)


def _params_key(params: Any) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


class SweepsMixin:
    """The sweeps and trials tables (mixed into Store)."""

    path: str

    if TYPE_CHECKING:  # provided by Database / MetricsMixin

        def _transact(self, body: Any, conn: Any = None) -> Any: ...
        def _read(self, sql: str, params: Any = ()) -> list[sqlite3.Row]: ...
        def flush(self) -> None: ...

    def trial_queue(self, sweep_id: str) -> SQLiteTrialQueue:
        """The sweep's trials as a TrialQueue."""
        return SQLiteTrialQueue(self, sweep_id)

    def create_sweep(
        self,
        *,
        spec: Mapping[str, Any],
        name: str | None = None,
        trials: Iterable[Mapping[str, Any]] | None = None,
        identity: str | None = None,
    ) -> str:
        """Insert a sweep (status 'created') and, in the same transaction, its trials.
        A second sweep with the same `identity` is refused (use find_or_create_sweep)."""
        spec_json = dumps(dict(spec), "spec")
        trial_rows = [dumps(dict(p), "params") for p in (trials or ())]
        return self._transact(
            lambda c: self._insert_sweep(c, spec_json, name, trial_rows, identity)
        )

    def find_or_create_sweep(
        self,
        *,
        identity: str,
        spec: Mapping[str, Any],
        name: str,
        trials: Iterable[Mapping[str, Any]],
        aliases: Sequence[str] = (),
        merge_spec: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
    ) -> tuple[str, bool, list[int]]:
        """(sweep id, created now?, indices of trials added) in one transaction.

        The sweep with this identity is found (or one stored under an older identity in
        `aliases`, which then takes the new one), or created with its trials. A found sweep
        is extended by the trials it does not hold yet (e.g. more seeds of the same spec),
        so repeating a command resumes it and widening its seeds extends it; its stored spec
        then becomes `merge_spec(old spec)` (default: `spec`). `name` must not be used by a
        sweep of another identity."""
        if not identity or not isinstance(identity, str):
            raise WdlabError("identity must be a non-empty string", field="identity")
        spec_json = dumps(dict(spec), "spec")
        wanted = [dumps(dict(p), "params") for p in trials]

        def find_or_create(c: sqlite3.Connection) -> tuple[str, bool, list[int]]:
            row = c.execute("SELECT id FROM sweeps WHERE identity = ?", (identity,)).fetchone()
            for alias in aliases:
                if row is not None:
                    break
                row = c.execute("SELECT id FROM sweeps WHERE identity = ?", (alias,)).fetchone()
                if row is not None:
                    c.execute("UPDATE sweeps SET identity = ? WHERE id = ?", (identity, row[0]))
            if row is None:
                taken = c.execute("SELECT 1 FROM sweeps WHERE name = ?", (name,)).fetchone()
                if taken:
                    raise ConfigError(
                        f"sweep name {name!r} is already used by a different sweep in "
                        f"{self.path}; pick another --name (or repeat that sweep's exact "
                        "command to resume it)",
                        field="name",
                    )
                sweep_id = self._insert_sweep(c, spec_json, name, wanted, identity)
                return sweep_id, True, list(range(len(wanted)))
            sweep_id = row[0]
            have = {
                _params_key(loads(r[0], self.path, f"a trial of sweep {sweep_id}"))
                for r in c.execute("SELECT params FROM trials WHERE sweep_id = ?", (sweep_id,))
            }
            missing = [p for p in wanted if _params_key(json.loads(p)) not in have]
            added = self._insert_trials(c, sweep_id, missing) if missing else []
            if added:
                new_spec = spec_json
                if merge_spec is not None:
                    old = c.execute("SELECT spec FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
                    old_spec = loads(old[0], self.path, f"sweeps.spec of sweep {sweep_id}")
                    new_spec = dumps(dict(merge_spec(dict(old_spec or {}))), "spec")
                c.execute("UPDATE sweeps SET spec = ? WHERE id = ?", (new_spec, sweep_id))
            return sweep_id, False, added

        return self._transact(find_or_create)

    def _insert_sweep(
        self,
        c: sqlite3.Connection,
        spec_json: str,
        name: str | None,
        trial_rows: list[str],
        identity: str | None,
    ) -> str:
        sweep_name = name
        if sweep_name is None:
            row = c.execute("SELECT value FROM meta WHERE key = 'sweep_counter'").fetchone()
            n = int(row[0]) + 1 if row and str(row[0]).isdigit() else 1
            c.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('sweep_counter', ?)", (str(n),)
            )
            sweep_name = f"sweep-{n}"
        if identity is not None and c.execute(
            "SELECT 1 FROM sweeps WHERE identity = ?", (identity,)
        ).fetchone():
            raise WdlabError(
                f"a sweep with identity {identity} already exists in {self.path}; "
                "use find_or_create_sweep to resume or extend it",
                field="identity",
            )
        for _ in range(20):
            sweep_id = _db._new_id()
            if c.execute("SELECT 1 FROM sweeps WHERE id = ?", (sweep_id,)).fetchone():
                continue
            c.execute(
                "INSERT INTO sweeps (id, name, spec, created, status, identity) "
                "VALUES (?, ?, ?, ?, 'created', ?)",
                (sweep_id, sweep_name, spec_json, now(), identity),
            )
            self._insert_trials(c, sweep_id, trial_rows)
            return sweep_id
        raise RuntimeError("could not draw an unused sweep id in 20 attempts")

    @staticmethod
    def _insert_trials(c: sqlite3.Connection, sweep_id: str, params_json: list[str]) -> list[int]:
        start = c.execute(
            "SELECT COALESCE(MAX(trial_index) + 1, 0) FROM trials WHERE sweep_id = ?", (sweep_id,)
        ).fetchone()[0]
        indices = list(range(start, start + len(params_json)))
        c.executemany(
            "INSERT INTO trials (sweep_id, trial_index, params, status) "
            "VALUES (?, ?, ?, 'pending')",
            [(sweep_id, i, p) for i, p in zip(indices, params_json, strict=True)],
        )
        return indices

    def add_trials(self, sweep_id: str, params: Iterable[Mapping[str, Any]]) -> list[int]:
        """Append pending trials (indices continue after the sweep's last); return indices."""
        params_json = [dumps(dict(p), "params") for p in params]

        def insert(c: sqlite3.Connection) -> list[int]:
            self._require_sweep(c, sweep_id)
            return self._insert_trials(c, sweep_id, params_json)

        return self._transact(insert)

    def claim_trial(
        self, sweep_id: str, worker: str, order: Sequence[int] | None = None
    ) -> TrialRecord | None:
        """Atomically take a pending trial for `worker`: the first pending one in `order`
        (trial indices, e.g. longest first), else the lowest; None when none is left.

        The select and the update share one BEGIN IMMEDIATE transaction, so two processes
        can never claim the same trial.
        """
        rank = {index: i for i, index in enumerate(order or ())}

        def claim(c: sqlite3.Connection) -> TrialRecord | None:
            self._require_sweep(c, sweep_id)
            sql = "SELECT trial_index FROM trials WHERE sweep_id = ? AND status = 'pending'"
            if not rank:
                row = c.execute(sql + " ORDER BY trial_index LIMIT 1", (sweep_id,)).fetchone()
            else:
                pending = [r[0] for r in c.execute(sql, (sweep_id,))]
                first = min(pending, key=lambda i: (rank.get(i, len(rank)), i), default=None)
                row = None if first is None else (first,)
            if row is None:
                return None
            c.execute(
                "UPDATE trials SET status = 'running', worker = ?, heartbeat = ?, error = NULL "
                "WHERE sweep_id = ? AND trial_index = ?",
                (worker, now(), sweep_id, row[0]),
            )
            return self._trial_from_row(
                c.execute(
                    "SELECT * FROM trials WHERE sweep_id = ? AND trial_index = ?",
                    (sweep_id, row[0]),
                ).fetchone()
            )

        return self._transact(claim)

    def heartbeat_trial(
        self, sweep_id: str, trial_index: int, worker: str, *, run_id: str | None = None
    ) -> bool:
        """Say `worker` is still on the trial (optionally linking its run). False when the
        trial is no longer this worker's running trial (e.g. requeued as stale)."""
        sets, params = ["heartbeat = ?"], [now()]
        if run_id is not None:
            sets.append("run_id = ?")
            params.append(run_id)

        def beat(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                f"UPDATE trials SET {', '.join(sets)} WHERE sweep_id = ? AND trial_index = ? "
                "AND worker = ? AND status = 'running'",
                (*params, sweep_id, trial_index, worker),
            )
            return cur.rowcount == 1

        return self._transact(beat)

    def finish_trial(
        self,
        sweep_id: str,
        trial_index: int,
        *,
        status: str = "finished",
        run_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """End a trial: status finished | failed | diverged, with its run and error text."""
        check_status(status, TRIAL_END_STATUSES, "status")
        trial_index = check_int(trial_index, "trial_index")
        self.flush()

        def finish(c: sqlite3.Connection) -> None:
            cur = c.execute(
                "UPDATE trials SET status = ?, run_id = COALESCE(?, run_id), error = ?, "
                "heartbeat = ? WHERE sweep_id = ? AND trial_index = ?",
                (status, run_id, error, now(), sweep_id, trial_index),
            )
            if cur.rowcount == 0:
                raise WdlabError(
                    f"no trial {trial_index} in sweep {sweep_id!r} of {self.path}",
                    field="trial_index",
                )

        self._transact(finish)

    def requeue_stale_trials(self, sweep_id: str, older_than: float) -> list[int]:
        """Put running trials whose heartbeat is older than `older_than` seconds back to
        pending (their worker died); return their indices."""
        cutoff = iso(datetime.now(timezone.utc) - timedelta(seconds=older_than))

        def requeue(c: sqlite3.Connection) -> list[int]:
            rows = c.execute(
                "SELECT trial_index FROM trials WHERE sweep_id = ? AND status = 'running' "
                "AND (heartbeat IS NULL OR heartbeat < ?) ORDER BY trial_index",
                (sweep_id, cutoff),
            ).fetchall()
            indices = [r[0] for r in rows]
            c.executemany(
                "UPDATE trials SET status = 'pending', worker = NULL "
                "WHERE sweep_id = ? AND trial_index = ?",
                [(sweep_id, i) for i in indices],
            )
            return indices

        return self._transact(requeue)

    def requeue_trial(self, sweep_id: str, index: int, worker: str | None) -> bool:
        """Put one running trial back to pending if `worker` still owns it; its run_id is
        kept so the next worker resumes that run. True if it was requeued."""

        def requeue(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE trials SET status = 'pending', worker = NULL WHERE sweep_id = ? "
                "AND trial_index = ? AND status = 'running' AND worker IS ?",
                (sweep_id, index, worker),
            )
            return cur.rowcount == 1

        return self._transact(requeue)

    def trials(self, sweep_id: str, status: str | None = None) -> list[TrialRecord]:
        """A sweep's trials by index (optionally of one status)."""
        sql, params = "SELECT * FROM trials WHERE sweep_id = ?", [sweep_id]
        if status is not None:
            sql += " AND status = ?"
            params.append(check_status(status, TRIAL_STATUSES, "status"))
        return [self._trial_from_row(r) for r in self._read(sql + " ORDER BY trial_index", params)]

    def get_sweep(self, ref: str) -> SweepRecord:
        """Find a sweep by exact id, exact name, or unique id prefix."""
        rows = self._read("SELECT * FROM sweeps WHERE id = ?", (ref,))
        if not rows:
            rows = self._read("SELECT * FROM sweeps WHERE name = ?", (ref,))
        if not rows and ref:
            pattern = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = self._read("SELECT * FROM sweeps WHERE id LIKE ? ESCAPE '\\'", (pattern,))
        if len(rows) != 1:
            what = "is ambiguous" if rows else "is not a sweep"
            raise WdlabError(
                f"sweep {ref!r} {what} in store {self.path}; list sweeps with `wdlab runs`",
                field="sweep",
            )
        return self._sweep_from_row(rows[0])

    def list_sweeps(self) -> list[SweepRecord]:
        """All sweeps, newest first."""
        rows = self._read("SELECT * FROM sweeps ORDER BY created DESC, rowid DESC")
        return [self._sweep_from_row(r) for r in rows]

    def update_sweep(self, sweep_id: str, *, status: str) -> None:
        check_status(status, SWEEP_STATUSES, "status")

        def update(c: sqlite3.Connection) -> None:
            self._require_sweep(c, sweep_id)
            c.execute("UPDATE sweeps SET status = ? WHERE id = ?", (status, sweep_id))

        self._transact(update)

    def delete_sweep(self, sweep_id: str) -> None:
        """Delete a sweep and its trials; its runs stay (with sweep_id cleared)."""

        def delete(c: sqlite3.Connection) -> None:
            self._require_sweep(c, sweep_id)
            c.execute("DELETE FROM sweeps WHERE id = ?", (sweep_id,))

        self._transact(delete)

    def _require_sweep(self, c: sqlite3.Connection, sweep_id: str) -> None:
        if not c.execute("SELECT 1 FROM sweeps WHERE id = ?", (sweep_id,)).fetchone():
            raise WdlabError(f"no sweep {sweep_id!r} in store {self.path}", field="sweep_id")

    def _sweep_from_row(self, row: sqlite3.Row) -> SweepRecord:
        spec = loads(row["spec"], self.path, f"sweeps.spec of sweep {row['id']}")
        return SweepRecord(
            id=row["id"],
            name=row["name"],
            spec=spec if isinstance(spec, dict) else {},
            created=datetime.fromisoformat(row["created"]),
            status=row["status"],
            identity=row["identity"],
        )

    def _trial_from_row(self, row: sqlite3.Row) -> TrialRecord:
        where = f"trials.params of trial {row['trial_index']} of sweep {row['sweep_id']}"
        return TrialRecord(
            sweep_id=row["sweep_id"],
            trial_index=int(row["trial_index"]),
            run_id=row["run_id"],
            params=loads(row["params"], self.path, where),
            status=row["status"],
            error=row["error"],
            worker=row["worker"],
            heartbeat=parse_time(row["heartbeat"]),
        )
