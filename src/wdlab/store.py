"""The run store: runs, metrics, artifacts, sweeps and trials in one SQLite file.

Why SQLite: one file that several processes (a training run, a monitor, a sweep's
workers) can write at once, that survives a crash without half-written rows, and that
anyone can query with the `sqlite3` shell. WAL mode lets readers run while a writer
commits; every write is one `BEGIN IMMEDIATE` transaction, retried when another process
holds the write lock longer than the busy timeout. Metrics are buffered in memory and
written in batches so that a training loop can log every step cheaply.

Importing this module must stay cheap (no torch): sweep workers and the CLI open stores
in fresh processes. Only `export_tensorboard` imports torch, lazily.
"""

from __future__ import annotations

import csv
import json
import math
import operator
import os
import platform
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from wdlab.atomic import atomic_open
from wdlab.errors import WdlabError

__all__ = [
    "DEFAULT_PATH",
    "SCHEMA_VERSION",
    "RUN_STATUSES",
    "TRIAL_STATUSES",
    "SWEEP_STATUSES",
    "Store",
    "RunRecord",
    "ArtifactRecord",
    "SweepRecord",
    "TrialRecord",
    "store_path_default",
]

DEFAULT_PATH = "wdlab.db"
SCHEMA_VERSION = 1
RUN_STATUSES = ("created", "running", "finished", "diverged", "interrupted", "failed")
TRIAL_STATUSES = ("pending", "running", "finished", "failed", "diverged")
SWEEP_STATUSES = ("created", "running", "finished", "failed", "interrupted")
_TRIAL_END_STATUSES = ("finished", "failed", "diverged")

_T = TypeVar("_T")
_INHERITED: list[sqlite3.Connection | None] = []  # connections a forked child must not touch


def store_path_default() -> str:
    """The store a CLI command uses when `--store` is not given: ./wdlab.db."""
    return DEFAULT_PATH


def _sql_in(values: Sequence[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


# Status sets are also CHECK constraints, so a raw sqlite3 session cannot break them either.
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sweeps (
    id      TEXT PRIMARY KEY,
    name    TEXT NOT NULL,
    spec    TEXT NOT NULL,
    created TEXT NOT NULL,
    status  TEXT NOT NULL CHECK (status IN {_sql_in(SWEEP_STATUSES)})
);
CREATE TABLE IF NOT EXISTS runs (
    id        TEXT PRIMARY KEY,
    name      TEXT NOT NULL,
    workload  TEXT NOT NULL,
    status    TEXT NOT NULL CHECK (status IN {_sql_in(RUN_STATUSES)}),
    config    TEXT NOT NULL,
    seed      INTEGER NOT NULL,
    created   TEXT NOT NULL,
    updated   TEXT NOT NULL,
    versions  TEXT NOT NULL,
    data_hash TEXT,
    sweep_id  TEXT REFERENCES sweeps(id) ON DELETE SET NULL,
    result    TEXT,
    message   TEXT
);
CREATE INDEX IF NOT EXISTS runs_name ON runs(name);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created);
CREATE INDEX IF NOT EXISTS runs_sweep ON runs(sweep_id);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name   TEXT NOT NULL,
    step   INTEGER NOT NULL,
    value  REAL,
    PRIMARY KEY (run_id, name, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS artifacts (
    id      INTEGER PRIMARY KEY,
    run_id  TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kind    TEXT NOT NULL,
    path    TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS artifacts_run ON artifacts(run_id);
CREATE TABLE IF NOT EXISTS trials (
    sweep_id    TEXT NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    trial_index INTEGER NOT NULL,
    run_id      TEXT REFERENCES runs(id) ON DELETE SET NULL,
    params      TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN {_sql_in(TRIAL_STATUSES)}),
    error       TEXT,
    worker      TEXT,
    heartbeat   TEXT,
    UNIQUE (sweep_id, trial_index)
);
CREATE INDEX IF NOT EXISTS trials_status ON trials(sweep_id, status, trial_index);
"""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RunRecord:
    """One training run; JSON columns are parsed, timestamps are aware UTC datetimes."""

    id: str
    name: str
    workload: str
    status: str
    config: dict[str, Any]
    seed: int
    created: datetime
    updated: datetime
    versions: dict[str, str]
    data_hash: str | None
    sweep_id: str | None
    result: dict[str, Any] | None
    message: str | None


@dataclass(frozen=True)
class ArtifactRecord:
    """A file a run produced (checkpoint, plot, export); `path` is stored as given."""

    run_id: str
    kind: str
    path: str
    created: datetime


@dataclass(frozen=True)
class SweepRecord:
    id: str
    name: str
    spec: dict[str, Any]
    created: datetime
    status: str


@dataclass(frozen=True)
class TrialRecord:
    """One point of a sweep; `worker`/`heartbeat` say who runs it and when it last reported."""

    sweep_id: str
    trial_index: int
    run_id: str | None
    params: dict[str, Any]
    status: str
    error: str | None
    worker: str | None
    heartbeat: datetime | None


# --------------------------------------------------------------------------- helpers


def _new_id() -> str:
    """8 hex characters: short enough to type, 4e9 values so collisions are rare (and retried)."""
    return uuid.uuid4().hex[:8]


def _now() -> str:
    # One fixed ISO format in UTC so that text order is time order (ORDER BY created works).
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _dumps(value: Any, field: str) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise WdlabError(
            f"{field} must be JSON-serializable (dicts, lists, str, numbers, bool, None): {exc}",
            field=field,
        ) from exc


def _check_status(status: str, allowed: Sequence[str], field: str) -> str:
    if status not in allowed:
        raise WdlabError(
            f"{field}={status!r} is not allowed; use one of {', '.join(allowed)}", field=field
        )
    return status


def _check_int(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise WdlabError(f"{field} must be an integer, got {value!r}", field=field)
    try:
        return operator.index(value)
    except TypeError:
        raise WdlabError(f"{field} must be an integer, got {value!r}", field=field) from None


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _versions() -> dict[str, str]:
    """What produced a run: recorded so that a result can be traced to its software."""
    from importlib import metadata

    import wdlab

    try:
        torch_version = metadata.version("torch")  # no `import torch`: keeps this cheap
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    return {
        "python": platform.python_version(),
        "torch": torch_version,
        "wdlab": wdlab.__version__,
        "platform": platform.platform(),
    }


# --------------------------------------------------------------------------- the store


class Store:
    """A wdlab run store backed by one SQLite file (see docs/store.md).

    Use one Store per process (it reopens its connection after a fork) and close it, or use
    it as a context manager, so that buffered metrics are written.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_PATH,
        *,
        flush_rows: int = 1000,
        flush_seconds: float = 2.0,
        timeout: float = 30.0,
    ) -> None:
        if flush_rows < 1:
            raise WdlabError(f"flush_rows must be >= 1, got {flush_rows}", field="flush_rows")
        if flush_seconds < 0:
            raise WdlabError(
                f"flush_seconds must be >= 0, got {flush_seconds}", field="flush_seconds"
            )
        self.path = os.fspath(path)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.timeout = timeout
        self._lock = threading.RLock()
        self._buffer: list[tuple[str, str, int, float | None]] = []
        self._last_flush = time.monotonic()
        self._known_runs: set[str] = set()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        self._conn = self._open()

    # ----------------------------------------------------------------- connection

    def _open(self) -> sqlite3.Connection:
        memory = self.path == ":memory:" or self.path.startswith("file::memory:")
        if not memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            if Path(self.path).is_dir():
                raise WdlabError(
                    f"store path {self.path} is a directory; pass a file path such as "
                    f"{os.path.join(self.path, DEFAULT_PATH)}",
                    field="store",
                )
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so the write lock is
            # taken up front and a busy database waits (busy_timeout) instead of failing late.
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.OperationalError as exc:
            raise WdlabError(f"cannot open store {self.path}: {exc}", field="store") from exc
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            # NORMAL in WAL: a crash of the process loses nothing committed; power loss may
            # lose the last commits but never corrupts. FULL would fsync every metric batch.
            conn.execute("PRAGMA synchronous = NORMAL")
            self._ensure_schema(conn)
        except sqlite3.OperationalError as exc:
            conn.close()
            raise WdlabError(f"cannot open store {self.path}: {exc}", field="store") from exc
        except sqlite3.DatabaseError as exc:  # "file is not a database" (SQLITE_NOTADB)
            conn.close()
            raise WdlabError(
                f"{self.path} is not a wdlab store (not an SQLite database): {exc}; "
                "pass another --store path",
                field="store",
            ) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _schema_version(self, conn: sqlite3.Connection) -> int | None:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            if tables:
                raise WdlabError(
                    f"{self.path} is an SQLite database but not a wdlab store (no meta table, "
                    f"has tables {', '.join(sorted(tables))}); pass another --store path",
                    field="store",
                )
            return None
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            raise WdlabError(
                f"{self.path} is not a wdlab store (meta table has no schema_version); "
                "pass another --store path",
                field="store",
            )
        return int(row[0])

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        version = self._schema_version(conn)  # fast path: no write lock for an existing store
        if version is None:

            def create(c: sqlite3.Connection) -> None:
                # Re-check under the write lock: another process may have created it meanwhile.
                if self._schema_version(c) is None:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            c.execute(statement)
                    c.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),),
                    )
                    c.execute("INSERT INTO meta (key, value) VALUES ('created', ?)", (_now(),))

            self._transact(create, conn)
            version = self._schema_version(conn)
        if version is not None and version > SCHEMA_VERSION:
            raise WdlabError(
                f"store {self.path} has schema version {version}, newer than this wdlab "
                f"supports ({SCHEMA_VERSION}); upgrade wdlab (pip install -U wdlab) or pass "
                "another --store path",
                field="store",
            )
        # version < SCHEMA_VERSION: migrations go here when the schema changes.

    @property
    def conn(self) -> sqlite3.Connection:
        """The live connection (reopened in a forked child, whose parent's handle is unsafe)."""
        if self._closed:
            raise WdlabError(f"store {self.path} is closed; open a new Store", field="store")
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._buffer = []  # the parent owns (and flushes) what it had buffered
            # Never close the inherited handle here: SQLite forbids using (closing included) a
            # connection across fork(); keeping a reference stops the garbage collector too.
            _INHERITED.append(self._conn)
            self._conn = self._open()
        assert self._conn is not None
        return self._conn

    def _retry(self, fn: Callable[[], _T], attempts: int = 8) -> _T:
        """Run fn, retrying on SQLITE_BUSY beyond the busy timeout (e.g. WAL recovery)."""
        delay = 0.05
        for attempt in range(attempts):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or attempt == attempts - 1:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    def _transact(
        self, body: Callable[[sqlite3.Connection], _T], conn: sqlite3.Connection | None = None
    ) -> _T:
        """Run body in one BEGIN IMMEDIATE transaction: all of it commits or none of it."""
        c = conn if conn is not None else self.conn

        def attempt() -> _T:
            c.execute("BEGIN IMMEDIATE")
            try:
                out = body(c)
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            return out

        with self._lock:
            return self._retry(attempt)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            conn = self.conn
            return self._retry(lambda: conn.execute(sql, params).fetchall())

    def close(self) -> None:
        """Write buffered metrics and close the connection; closing twice is harmless."""
        if self._closed:
            return
        try:
            if os.getpid() == self._pid:
                self.flush()
        finally:
            self._closed = True
            if self._conn is not None and os.getpid() == self._pid:
                self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # Sending a Store to another process reopens the same file there (no buffered rows).
        return (
            _reopen,
            (self.path, self.flush_rows, self.flush_seconds, self.timeout),
        )

    def __repr__(self) -> str:
        return f"Store({self.path!r})"

    # ----------------------------------------------------------------- runs

    def create_run(
        self,
        *,
        workload: str,
        config: Mapping[str, Any],
        seed: int,
        name: str | None = None,
        sweep_id: str | None = None,
        data_hash: str | None = None,
    ) -> str:
        """Insert a run with status 'created'; return its 8-hex-character id.

        The default name is '<workload>-<n>', n counting this store's runs of that workload.
        """
        if not workload or not isinstance(workload, str):
            raise WdlabError("workload must be a non-empty string", field="workload")
        seed = _check_int(seed, "seed")
        config_json = _dumps(dict(config), "config")
        versions_json = _dumps(_versions(), "versions")
        if name is not None and (not isinstance(name, str) or not name):
            raise WdlabError(f"name must be a non-empty string, got {name!r}", field="name")
        self.flush()

        def insert(c: sqlite3.Connection) -> str:
            if (
                sweep_id is not None
                and not c.execute("SELECT 1 FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
            ):
                raise WdlabError(
                    f"sweep_id {sweep_id!r} is not a sweep in {self.path}", field="sweep_id"
                )
            run_name = name
            if run_name is None:
                key = f"run_counter:{workload}"
                row = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                n = int(row[0]) + 1 if row else 1
                c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(n)))
                run_name = f"{workload}-{n}"
            now = _now()
            for _ in range(20):
                run_id = _new_id()
                if c.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                    continue  # id collision: draw again
                c.execute(
                    "INSERT INTO runs (id, name, workload, status, config, seed, created, "
                    "updated, versions, data_hash, sweep_id) "
                    "VALUES (?, ?, ?, 'created', ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        run_name,
                        workload,
                        config_json,
                        seed,
                        now,
                        now,
                        versions_json,
                        data_hash,
                        sweep_id,
                    ),
                )
                return run_id
            raise RuntimeError("could not draw an unused run id in 20 attempts")

        run_id = self._transact(insert)
        self._known_runs.add(run_id)
        return run_id

    def update_run(
        self,
        run_id: str,
        *,
        status: str | None = None,
        result: Mapping[str, Any] | None = None,
        message: str | None = None,
    ) -> None:
        """Set the given fields (None leaves a field unchanged) and bump `updated`.

        Buffered metrics are written first, so a run marked finished has all its metrics.
        """
        sets = ["updated = ?"]
        params: list[Any] = [_now()]
        if status is not None:
            sets.append("status = ?")
            params.append(_check_status(status, RUN_STATUSES, "status"))
        if result is not None:
            sets.append("result = ?")
            params.append(_dumps(dict(result), "result"))
        if message is not None:
            sets.append("message = ?")
            params.append(str(message))
        self.flush()

        def update(c: sqlite3.Connection) -> None:
            cur = c.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*params, run_id))
            if cur.rowcount == 0:
                raise self._unknown_run(run_id)

        self._transact(update)

    def get_run(self, ref: str) -> RunRecord:
        """Find a run by exact id, then exact name, then unique id prefix."""
        return self._run_from_row(self._resolve_row(ref))

    def list_runs(
        self,
        workload: str | None = None,
        status: str | None = None,
        sweep_id: str | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Runs matching every given filter, newest first."""
        where, params = [], []
        if workload is not None:
            where.append("workload = ?")
            params.append(workload)
        if status is not None:
            where.append("status = ?")
            params.append(_check_status(status, RUN_STATUSES, "status"))
        if sweep_id is not None:
            where.append("sweep_id = ?")
            params.append(sweep_id)
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC, rowid DESC"
        if limit is not None:
            limit = _check_int(limit, "limit")
            if limit < 0:
                raise WdlabError(f"limit must be >= 0, got {limit}", field="limit")
            sql += f" LIMIT {limit}"
        self.flush()
        return [self._run_from_row(r) for r in self._read(sql, params)]

    def delete_run(self, run_id: str) -> None:
        """Delete a run (exact id) with its metrics and artifact rows; files stay on disk."""
        self.flush()

        def delete(c: sqlite3.Connection) -> None:
            if c.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount == 0:
                raise self._unknown_run(run_id)

        self._transact(delete)
        self._known_runs.discard(run_id)

    def _resolve_row(self, ref: str) -> sqlite3.Row:
        if not isinstance(ref, str) or not ref:
            raise WdlabError(
                f"run reference must be a non-empty id, id prefix or name, got {ref!r}",
                field="run",
            )
        self.flush()
        rows = self._read("SELECT * FROM runs WHERE id = ?", (ref,))
        if not rows:
            rows = self._read("SELECT * FROM runs WHERE name = ? ORDER BY created", (ref,))
        if not rows:
            pattern = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = self._read(
                "SELECT * FROM runs WHERE id LIKE ? ESCAPE '\\' ORDER BY created", (pattern,)
            )
        if len(rows) == 1:
            return rows[0]
        if not rows:
            raise self._unknown_run(ref)
        ids = ", ".join(f"{r['id']} ({r['name']})" for r in rows[:10])
        more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
        raise WdlabError(
            f"run {ref!r} is ambiguous: it matches {len(rows)} runs: {ids}{more}; "
            "give more characters of the id (list them with `wdlab runs`)",
            field="run",
        )

    def _unknown_run(self, ref: str) -> WdlabError:
        return WdlabError(
            f"no run {ref!r} in store {self.path}; list runs with `wdlab runs --store {self.path}`",
            field="run",
        )

    def _run_id(self, ref: str) -> str:
        if ref in self._known_runs:
            return ref
        return str(self._resolve_row(ref)["id"])

    @staticmethod
    def _run_from_row(row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            id=row["id"],
            name=row["name"],
            workload=row["workload"],
            status=row["status"],
            config=json.loads(row["config"]),
            seed=int(row["seed"]),
            created=datetime.fromisoformat(row["created"]),
            updated=datetime.fromisoformat(row["updated"]),
            versions=json.loads(row["versions"]),
            data_hash=row["data_hash"],
            sweep_id=row["sweep_id"],
            result=None if row["result"] is None else json.loads(row["result"]),
            message=row["message"],
        )

    # ----------------------------------------------------------------- metrics

    def log_metrics(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        """Buffer one step's scalars; written by flush() (automatic past flush_rows rows or
        flush_seconds seconds, and on close). A later value for the same (run, name, step)
        replaces the earlier one, so a resumed run re-logging a step leaves one row."""
        step = _check_int(step, "step")
        if run_id not in self._known_runs:
            with self._lock:
                exists = self._read("SELECT 1 FROM runs WHERE id = ?", (run_id,))
            if not exists:
                raise self._unknown_run(run_id)
            self._known_runs.add(run_id)
        rows = []
        for key, value in metrics.items():
            if not isinstance(key, str) or not key:
                raise WdlabError(
                    f"metric names must be non-empty strings, got {key!r}", field="metrics"
                )
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise WdlabError(
                    f"metric {key!r} must be a number, got {value!r}", field="metrics"
                ) from None
            # SQLite turns NaN into NULL; we store NULL on purpose and read it back as nan.
            rows.append((run_id, key, step, None if math.isnan(v) else v))
        with self._lock:
            if os.getpid() != self._pid:
                _ = self.conn  # a forked child: reopen and start a fresh buffer
            self._buffer.extend(rows)
            due = (
                len(self._buffer) >= self.flush_rows
                or time.monotonic() - self._last_flush >= self.flush_seconds
            )
        if due:
            self.flush()

    def flush(self) -> None:
        """Write all buffered metrics in one transaction (all rows or, on error, none)."""
        with self._lock:
            if self._closed or not self._buffer:
                self._last_flush = time.monotonic()
                return
            rows = self._buffer

            def write(c: sqlite3.Connection) -> None:
                c.executemany(
                    "INSERT OR REPLACE INTO metrics (run_id, name, step, value) "
                    "VALUES (?, ?, ?, ?)",
                    rows,
                )

            try:
                self._transact(write)
            except sqlite3.IntegrityError:
                # A run was deleted (by another process) after we logged for it: keep the rows
                # of runs that still exist, and say which were dropped.
                ids = sorted({r[0] for r in rows})
                alive = {
                    r[0]
                    for r in self.conn.execute(
                        f"SELECT id FROM runs WHERE id IN ({', '.join('?' * len(ids))})", ids
                    )
                }
                self._buffer = [r for r in rows if r[0] in alive]
                self._known_runs -= set(ids) - alive
                self.flush()
                raise WdlabError(
                    "dropped buffered metrics of deleted run(s) "
                    f"{', '.join(sorted(set(ids) - alive))} in {self.path}",
                    field="run",
                ) from None
            self._buffer = []
            self._last_flush = time.monotonic()

    def metrics(
        self, run_id: str, names: Iterable[str] | None = None
    ) -> dict[str, list[tuple[int, float]]]:
        """{name: [(step, value), ...]} sorted by step; NaN comes back as float('nan')."""
        rid = self._run_id(run_id)
        self.flush()
        sql = "SELECT name, step, value FROM metrics WHERE run_id = ?"
        params: list[Any] = [rid]
        if names is not None:
            wanted = [names] if isinstance(names, str) else list(names)
            if not wanted:
                return {}
            sql += f" AND name IN ({', '.join('?' * len(wanted))})"
            params.extend(wanted)
        out: dict[str, list[tuple[int, float]]] = {}
        for name, step, value in self._read(sql + " ORDER BY name, step", params):
            out.setdefault(name, []).append((step, math.nan if value is None else value))
        return out

    def metric_names(self, run_id: str) -> list[str]:
        """Names of the metrics a run has logged, sorted."""
        rid = self._run_id(run_id)
        self.flush()
        rows = self._read(
            "SELECT DISTINCT name FROM metrics WHERE run_id = ? ORDER BY name", (rid,)
        )
        return [r[0] for r in rows]

    def last_metrics(self, run_id: str) -> dict[str, float]:
        """Each metric's value at its own latest step."""
        rid = self._run_id(run_id)
        self.flush()
        # SQLite guarantees that bare columns come from the row that holds MAX(step).
        rows = self._read(
            "SELECT name, value, MAX(step) FROM metrics WHERE run_id = ? GROUP BY name", (rid,)
        )
        return {name: math.nan if value is None else value for name, value, _ in rows}

    # ----------------------------------------------------------------- artifacts

    def add_artifact(self, run_id: str, kind: str, path: str | os.PathLike[str]) -> None:
        """Record a file the run produced; the path is stored exactly as given."""
        if not kind:
            raise WdlabError("artifact kind must be a non-empty string", field="kind")
        self.flush()

        def insert(c: sqlite3.Connection) -> None:
            if not c.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                raise self._unknown_run(run_id)
            c.execute(
                "INSERT INTO artifacts (run_id, kind, path, created) VALUES (?, ?, ?, ?)",
                (run_id, kind, os.fspath(path), _now()),
            )

        self._transact(insert)

    def artifacts(self, run_id: str, kind: str | None = None) -> list[ArtifactRecord]:
        """A run's artifacts in the order they were added (optionally one kind)."""
        rid = self._run_id(run_id)
        sql = "SELECT run_id, kind, path, created FROM artifacts WHERE run_id = ?"
        params: list[Any] = [rid]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        return [
            ArtifactRecord(r[0], r[1], r[2], datetime.fromisoformat(r[3]))
            for r in self._read(sql + " ORDER BY id", params)
        ]

    # ----------------------------------------------------------------- sweeps and trials

    def create_sweep(
        self,
        *,
        spec: Mapping[str, Any],
        name: str | None = None,
        trials: Iterable[Mapping[str, Any]] | None = None,
    ) -> str:
        """Insert a sweep (status 'created') and, in the same transaction, its trials."""
        spec_json = _dumps(dict(spec), "spec")
        trial_rows = [_dumps(dict(p), "params") for p in (trials or ())]

        def insert(c: sqlite3.Connection) -> str:
            sweep_name = name
            if sweep_name is None:
                row = c.execute("SELECT value FROM meta WHERE key = 'sweep_counter'").fetchone()
                n = int(row[0]) + 1 if row else 1
                c.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('sweep_counter', ?)",
                    (str(n),),
                )
                sweep_name = f"sweep-{n}"
            for _ in range(20):
                sweep_id = _new_id()
                if c.execute("SELECT 1 FROM sweeps WHERE id = ?", (sweep_id,)).fetchone():
                    continue
                c.execute(
                    "INSERT INTO sweeps (id, name, spec, created, status) "
                    "VALUES (?, ?, ?, ?, 'created')",
                    (sweep_id, sweep_name, spec_json, _now()),
                )
                self._insert_trials(c, sweep_id, trial_rows)
                return sweep_id
            raise RuntimeError("could not draw an unused sweep id in 20 attempts")

        return self._transact(insert)

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
        params_json = [_dumps(dict(p), "params") for p in params]

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
                (worker, _now(), sweep_id, row[0]),
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
        sets, params = ["heartbeat = ?"], [_now()]
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
        _check_status(status, _TRIAL_END_STATUSES, "status")
        trial_index = _check_int(trial_index, "trial_index")
        self.flush()

        def finish(c: sqlite3.Connection) -> None:
            cur = c.execute(
                "UPDATE trials SET status = ?, run_id = COALESCE(?, run_id), error = ?, "
                "heartbeat = ? WHERE sweep_id = ? AND trial_index = ?",
                (status, run_id, error, _now(), sweep_id, trial_index),
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
        cutoff = _iso(datetime.now(timezone.utc) - timedelta(seconds=older_than))

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
            params.append(_check_status(status, TRIAL_STATUSES, "status"))
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
        _check_status(status, SWEEP_STATUSES, "status")

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

    @staticmethod
    def _sweep_from_row(row: sqlite3.Row) -> SweepRecord:
        return SweepRecord(
            id=row["id"],
            name=row["name"],
            spec=json.loads(row["spec"]),
            created=datetime.fromisoformat(row["created"]),
            status=row["status"],
        )

    @staticmethod
    def _trial_from_row(row: sqlite3.Row) -> TrialRecord:
        return TrialRecord(
            sweep_id=row["sweep_id"],
            trial_index=int(row["trial_index"]),
            run_id=row["run_id"],
            params=json.loads(row["params"]),
            status=row["status"],
            error=row["error"],
            worker=row["worker"],
            heartbeat=_parse_time(row["heartbeat"]),
        )

    # ----------------------------------------------------------------- exporters

    def export_csv(self, run_id: str, path: str | os.PathLike[str]) -> Path:
        """Write a run's metrics as long-format CSV (step,name,value), sorted by step then
        name. Written to a temporary file and renamed, so `path` is never half-written."""
        series = self.metrics(run_id)
        rows = sorted((step, name, value) for name, pts in series.items() for step, value in pts)
        target = Path(path)
        with atomic_open(target, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "name", "value"])
            for step, name, value in rows:
                writer.writerow([step, name, repr(float(value))])  # repr: exact round trip
        return target

    def export_tensorboard(self, run_id: str, logdir: str | os.PathLike[str]) -> Path:
        """Write a run's metrics as TensorBoard scalars (tag = metric name) into `logdir`
        (which must not hold events yet), plus its config as text. Needs tensorboard."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise WdlabError(
                "exporting to TensorBoard needs the tensorboard package: "
                "pip install 'tensorboard>=2.14'",
                field="tensorboard",
            ) from exc
        record = self.get_run(run_id)
        series = self.metrics(record.id)
        out = Path(logdir)
        if out.is_dir() and any(p.name.startswith("events.out.tfevents") for p in out.iterdir()):
            # A second export would add a second event file and TensorBoard would show every
            # point twice.
            raise WdlabError(
                f"logdir {out} already holds TensorBoard events; pass an empty directory, "
                f"e.g. {out / record.name}",
                field="logdir",
            )
        writer = SummaryWriter(log_dir=os.fspath(out))
        try:
            for name, pts in series.items():
                for step, value in pts:
                    writer.add_scalar(name, value, global_step=step)
            config = json.dumps(record.config, indent=2, sort_keys=True)
            writer.add_text(
                "config",
                f"run {record.id} ({record.name})\n\n    " + config.replace("\n", "\n    "),
                global_step=0,
            )
        finally:
            writer.close()
        return out


def _reopen(path: str, flush_rows: int, flush_seconds: float, timeout: float) -> Store:
    return Store(path, flush_rows=flush_rows, flush_seconds=flush_seconds, timeout=timeout)
