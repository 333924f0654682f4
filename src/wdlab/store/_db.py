"""The connection: one SQLite file, WAL, one BEGIN IMMEDIATE transaction per write.

Why one place: every read and write goes through `_read` / `_transact`, so busy retries,
fork safety and the mapping of a damaged file to one clear line (StoreError) are done once.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from wdlab.errors import StoreError, WdlabError
from wdlab.store import schema

DEFAULT_PATH = "wdlab.db"
_T = TypeVar("_T")
_INHERITED: list[sqlite3.Connection | None] = []  # connections a forked child must not touch
_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


def store_path_default() -> str:
    """The store a CLI command uses when `--store` is not given: ./wdlab.db."""
    return DEFAULT_PATH


def _new_id() -> str:
    """8 hex characters: short enough to type, 4e9 values so collisions are rare (and retried)."""
    return uuid.uuid4().hex[:8]


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def is_corrupt(exc: BaseException) -> bool:
    """True for SQLite's "database disk image is malformed" / "file is not a database"."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code in _CORRUPT_CODES
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def damaged(path: str, exc: BaseException) -> StoreError:
    """The one line for a store whose pages are damaged: what happened and how to recover."""
    return StoreError(
        f"store {path} is damaged ({exc}); recover what it holds with "
        f"`sqlite3 {path} .recover | sqlite3 {path}.recovered` and pass --store "
        f"{path}.recovered, or move {path} aside to start a new store",
        field="store",
    )


class Database:
    """One SQLite file with wdlab's pragmas, schema and retrying transactions.

    `create=False` opens an existing store only: a missing file is an error and nothing is
    created on disk (for commands that only read).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_PATH,
        *,
        flush_rows: int = 1000,
        flush_seconds: float = 2.0,
        timeout: float = 30.0,
        create: bool = True,
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
        self.create = create
        self._lock = threading.RLock()
        self._buffer: list[tuple[str, str, int, float | None]] = []
        self._last_flush = time.monotonic()
        self._known_runs: set[str] = set()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        self._conn = self._open()

    @classmethod
    def open_existing(cls, path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """An existing store (never creates a file): for commands that only read."""
        return cls(path, create=False, **kwargs)

    # ----------------------------------------------------------------- connection

    def _memory(self) -> bool:
        return self.path == ":memory:" or self.path.startswith("file::memory:")

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so the write lock is
        # taken up front and a busy database waits (busy_timeout) instead of failing late.
        options: dict[str, Any] = {
            "timeout": self.timeout,
            "isolation_level": None,
            "check_same_thread": False,
        }
        if self.create or self._memory():
            return sqlite3.connect(self.path, **options)
        uri = Path(self.path).resolve().as_uri() + "?mode=rw"  # rw: never create the file
        return sqlite3.connect(uri, uri=True, **options)

    def _open(self) -> sqlite3.Connection:
        if not self._memory():
            target = Path(self.path)
            if target.is_dir():
                raise StoreError(
                    f"store path {self.path} is a directory; pass a file path such as "
                    f"{os.path.join(self.path, DEFAULT_PATH)}",
                    field="store",
                )
            if not self.create and not target.is_file():
                raise StoreError(
                    f"no store at {self.path}; pass the --store of an existing store "
                    "(`wdlab run` creates one)",
                    field="store",
                )
            if not self.create and target.stat().st_size == 0:
                raise StoreError(
                    f"{self.path} is an empty file, not a wdlab store; pass another --store path",
                    field="store",
                )
            if self.create:
                target.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._connect()
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}", field="store") from exc
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            # Read-only first: another program's SQLite file is refused before the WAL pragma
            # below would rewrite its header.
            schema.version(conn, self.path)
            self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            # NORMAL in WAL: a crash of the process loses nothing committed; power loss may
            # lose the last commits but never corrupts. FULL would fsync every metric batch.
            conn.execute("PRAGMA synchronous = NORMAL")
            schema.ensure(conn, self.path, lambda body: self._transact(body, conn))
            _quick_check(conn, self.path, [f"PRAGMA quick_check({t})" for t in schema.SMALL_TABLES])
        except WdlabError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            if isinstance(exc, sqlite3.OperationalError) and not is_corrupt(exc):
                raise StoreError(f"cannot open store {self.path}: {exc}", field="store") from exc
            if "not a database" in str(exc).lower():
                raise StoreError(
                    f"{self.path} is not a wdlab store (not an SQLite database): {exc}; "
                    "pass another --store path",
                    field="store",
                ) from exc
            raise damaged(self.path, exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """The live connection (reopened in a forked child, whose parent's handle is unsafe)."""
        if self._closed:
            raise StoreError(f"store {self.path} is closed; open a new Store", field="store")
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
            try:
                return self._retry(attempt)
            except sqlite3.DatabaseError as exc:
                if conn is None and is_corrupt(exc):
                    raise damaged(self.path, exc) from exc
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            conn = self.conn
            try:
                return self._retry(lambda: conn.execute(sql, params).fetchall())
            except sqlite3.DatabaseError as exc:
                if is_corrupt(exc):
                    raise damaged(self.path, exc) from exc
                raise

    def check(self, full: bool = False) -> None:
        """Raise StoreError when the store's pages are damaged. The open checks the small
        tables (runs, sweeps, trials: what listings read); `full=True` checks every page
        (metrics included; about 0.4 s per million metric rows)."""
        if full:
            checks = ["PRAGMA quick_check"]
        else:
            checks = [f"PRAGMA quick_check({t})" for t in schema.SMALL_TABLES]
        with self._lock:
            try:
                _quick_check(self.conn, self.path, checks)
            except sqlite3.DatabaseError as exc:
                raise damaged(self.path, exc) from exc

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

    def flush(self) -> None:  # the metrics room overrides this
        pass

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # Sending a Store to another process reopens the same file there (no buffered rows).
        return (
            _reopen,
            (type(self), self.path, self.flush_rows, self.flush_seconds, self.timeout),
        )

    def __repr__(self) -> str:
        return f"Store({self.path!r})"


def _quick_check(conn: sqlite3.Connection, path: str, checks: list[str]) -> None:
    for sql in checks:
        problems = [r[0] for r in conn.execute(sql).fetchall() if r[0] != "ok"]
        if problems:
            raise damaged(path, sqlite3.DatabaseError(problems[0]))


def _reopen(
    cls: type[Database], path: str, flush_rows: int, flush_seconds: float, timeout: float
) -> Database:
    return cls(path, flush_rows=flush_rows, flush_seconds=flush_seconds, timeout=timeout)
