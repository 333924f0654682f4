"""Metrics: buffered writes, reads, and the cut back to a checkpoint on resume.

Why buffered: a training loop logs every step; one transaction per step would cost more
than the step. The buffer is written by flush(), which is also the commit point the
training loop calls right before it writes a checkpoint: after flush() returns, every row
logged so far survives a kill of the process.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from wdlab.errors import WdlabError
from wdlab.store.records import check_int


class MetricsMixin:
    """The metrics table (mixed into Store)."""

    path: str
    flush_rows: int
    flush_seconds: float
    _lock: threading.RLock
    _buffer: list[tuple[str, str, int, float | None]]
    _last_flush: float
    _known_runs: set[str]
    _closed: bool
    _pid: int

    if TYPE_CHECKING:  # provided by Database and RunsMixin

        @property
        def conn(self) -> sqlite3.Connection: ...
        def _transact(self, body: Any, conn: Any = None) -> Any: ...
        def _read(self, sql: str, params: Any = ()) -> list[sqlite3.Row]: ...
        def _run_id(self, ref: str) -> str: ...
        def _unknown_run(self, ref: str) -> WdlabError: ...

    def log_metrics(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        """Buffer one step's scalars; written by flush() (automatic past flush_rows rows or
        flush_seconds seconds, and on close). A later value for the same (run, name, step)
        replaces the earlier one, so a resumed run re-logging a step leaves one row."""
        step = check_int(step, "step")
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
        """Write all buffered metrics in one transaction (all rows or, on error, none).
        When it returns, the rows are committed: a kill of this process keeps them."""
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

    def truncate_metrics(self, run_id: str, after_step: int) -> int:
        """Delete a run's rows logged after `after_step` (exact id); the number deleted.

        A resumed run calls this with its checkpoint's step: rows a killed process wrote
        past its last checkpoint go, and the resumed run logs those steps again, so the
        rows equal an uninterrupted run's (no gap, no duplicate, no stale value)."""
        after_step = check_int(after_step, "after_step")
        self.flush()

        def delete(c: sqlite3.Connection) -> int:
            if not c.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                raise self._unknown_run(run_id)
            cur = c.execute(
                "DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, after_step)
            )
            return cur.rowcount

        return int(self._transact(delete))

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
