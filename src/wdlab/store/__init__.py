"""The run store: runs, metrics, artifacts, sweeps and trials in one SQLite file.

Why SQLite: one file that several processes (a training run, a monitor, a sweep's
workers) can write at once, that survives a crash without half-written rows, and that
anyone can query with the `sqlite3` shell. WAL mode lets readers run while a writer
commits; every write is one `BEGIN IMMEDIATE` transaction, retried when another process
holds the write lock longer than the busy timeout. Metrics are buffered in memory and
written in batches so that a training loop can log every step cheaply; `flush()` is the
commit point the loop calls before each checkpoint.

The rooms: _db (connection, transactions, damaged files), schema (tables, user_version
migrations), runs (runs, leases, artifacts), metrics, queue (sweeps, the TrialQueue),
export. Importing this package stays cheap (no torch): sweep workers and the CLI open
stores in fresh processes. Only `export_tensorboard` imports torch, lazily.
"""

from __future__ import annotations

from wdlab.errors import StoreError
from wdlab.lease import LEASE_BEAT_SECONDS, LEASE_STALE_SECONDS, current_owner
from wdlab.store._db import DEFAULT_PATH, Database, store_path_default
from wdlab.store.export import ExportMixin
from wdlab.store.metrics import MetricsMixin
from wdlab.store.queue import (
    DriverTrialQueue,
    SQLiteTrialQueue,
    SweepsMixin,
    TrialQueue,
    serve_queue_call,
)
from wdlab.store.records import ArtifactRecord, RunRecord, SweepRecord, TrialRecord
from wdlab.store.runs import RunBusyError, RunsMixin
from wdlab.store.schema import RUN_STATUSES, SCHEMA_VERSION, SWEEP_STATUSES, TRIAL_STATUSES

__all__ = [
    "DEFAULT_PATH",
    "LEASE_BEAT_SECONDS",
    "LEASE_STALE_SECONDS",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "SWEEP_STATUSES",
    "TRIAL_STATUSES",
    "ArtifactRecord",
    "DriverTrialQueue",
    "RunBusyError",
    "RunRecord",
    "SQLiteTrialQueue",
    "Store",
    "StoreError",
    "SweepRecord",
    "TrialQueue",
    "TrialRecord",
    "current_owner",
    "serve_queue_call",
    "store_path_default",
]


class Store(RunsMixin, MetricsMixin, SweepsMixin, ExportMixin, Database):
    """A wdlab run store backed by one SQLite file (see docs/store.md).

    `Store(path)` opens or creates it; `Store(path, create=False)` (or
    `Store.open_existing(path)`) opens an existing one and never creates a file. Use one
    Store per process (it reopens its connection after a fork) and close it, or use it as a
    context manager, so that buffered metrics are written.
    """
