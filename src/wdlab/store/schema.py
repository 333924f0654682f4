"""The store's tables and their migrations, versioned by `PRAGMA user_version`.

Why user_version: it lives in the file header, is read without touching any table and is
written inside the migrating transaction, so a store is always at exactly one version.
Wave-1 stores (wdlab <= 0.1) have user_version 0 and `meta.schema_version = 1`; they are
migrated in place, in one transaction, the first time a newer wdlab opens them.
`meta.schema_version` is kept equal to the version so that an older wdlab refuses a newer
store instead of writing into it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence

from wdlab.errors import StoreError, WdlabError
from wdlab.store.records import now

SCHEMA_VERSION = 2
RUN_STATUSES = ("created", "running", "finished", "diverged", "interrupted", "failed")
TRIAL_STATUSES = ("pending", "running", "finished", "failed", "diverged")
SWEEP_STATUSES = ("created", "running", "finished", "failed", "interrupted")
SMALL_TABLES = ("meta", "runs", "sweeps", "trials", "artifacts")  # checked on every open


def _sql_in(values: Sequence[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


# Version 1, exactly as wave 1 created it. Status sets are CHECK constraints, so a raw
# sqlite3 session cannot break them either.
_V1 = f"""
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


def _execute_script(c: sqlite3.Connection, script: str) -> None:
    # Not executescript(): that commits, and every step here belongs to one transaction.
    for statement in script.split(";"):
        if statement.strip():
            c.execute(statement)


def _to_v2(c: sqlite3.Connection) -> None:
    """Run leases (who trains a run, when it last said so) and one sweep per spec identity.

    The identity of an existing sweep is read from its spec JSON; where wave 1's race made
    two sweeps of one identity, the oldest keeps it (the other stays, without identity)."""
    c.execute("ALTER TABLE runs ADD COLUMN owner TEXT")
    c.execute("ALTER TABLE runs ADD COLUMN heartbeat TEXT")
    c.execute("ALTER TABLE sweeps ADD COLUMN identity TEXT")
    seen: set[str] = set()
    rows = c.execute("SELECT id, spec FROM sweeps ORDER BY created, rowid").fetchall()
    for sweep_id, spec in rows:
        try:
            identity = json.loads(spec).get("identity")
        except (ValueError, AttributeError):
            identity = None
        if isinstance(identity, str) and identity not in seen:
            seen.add(identity)
            c.execute("UPDATE sweeps SET identity = ? WHERE id = ?", (identity, sweep_id))
    c.execute("CREATE UNIQUE INDEX sweeps_identity ON sweeps(identity)")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {2: _to_v2}


def _bad(path: str, what: str) -> WdlabError:
    return StoreError(
        f"{path} is not a wdlab store ({what}); pass another --store path", field="store"
    )


def version(c: sqlite3.Connection, path: str) -> int | None:
    """The store's schema version; None for an empty database (a new store)."""
    user_version = int(c.execute("PRAGMA user_version").fetchone()[0])
    tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "meta" not in tables:
        if tables:
            raise _bad(path, f"no meta table, has tables {', '.join(sorted(tables))}")
        return None
    row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        raise _bad(path, "meta table has no schema_version")
    try:
        meta_version = int(row[0])
    except (TypeError, ValueError):
        raise StoreError(
            f"store {path} is damaged: meta.schema_version is {row[0]!r}, not an integer; "
            f"set it back with `sqlite3 {path} \"UPDATE meta SET value='{max(user_version, 1)}' "
            "WHERE key='schema_version'\"` or pass another --store path",
            field="store",
        ) from None
    return max(user_version, meta_version)


Transact = Callable[[Callable[[sqlite3.Connection], None]], None]


def ensure(c: sqlite3.Connection, path: str, transact: Transact) -> None:
    """Create a new store or migrate an older one to SCHEMA_VERSION; refuse a newer one."""
    current = version(c, path)  # fast path: no write lock for an up-to-date store
    if current is not None and current > SCHEMA_VERSION:
        raise StoreError(
            f"store {path} has schema version {current}, newer than this wdlab supports "
            f"({SCHEMA_VERSION}); upgrade wdlab (pip install -U wdlab) or pass another "
            "--store path",
            field="store",
        )
    if current == SCHEMA_VERSION:
        return

    def upgrade(tx: sqlite3.Connection) -> None:
        # Re-read under the write lock: another process may have created or migrated it.
        found = version(tx, path)
        if found is None:
            _execute_script(tx, _V1)
            tx.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
            tx.execute("INSERT INTO meta (key, value) VALUES ('created', ?)", (now(),))
            found = 1
        for target in range(found + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[target](tx)
        tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        tx.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
        )

    transact(upgrade)
