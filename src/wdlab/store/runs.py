"""Runs and their artifacts: create, look up, update, lease (who trains it), delete."""

from __future__ import annotations

import os
import platform
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from wdlab import lease
from wdlab.errors import StoreError, WdlabError
from wdlab.store import _db
from wdlab.store.records import (
    ArtifactRecord,
    RunRecord,
    check_int,
    check_status,
    dumps,
    loads,
    now,
    parse_time,
)
from wdlab.store.schema import RUN_STATUSES

RESUMABLE = ("interrupted", "failed")


class RunBusyError(WdlabError):
    """The run is held by another live process (its lease)."""


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


def _effective_status(row: sqlite3.Row) -> str:
    """`running` (or `created` by a trainer) whose owner is gone reads as `interrupted`."""
    status = row["status"]
    maybe_live = status == "running" or (status == "created" and row["owner"])
    if maybe_live and not lease.alive(row["owner"], parse_time(row["heartbeat"])):
        return "interrupted"
    return status


class RunsMixin:
    """The runs and artifacts tables (mixed into Store)."""

    path: str
    _known_runs: set[str]

    if TYPE_CHECKING:  # provided by Database and MetricsMixin

        def _transact(self, body: Any, conn: Any = None) -> Any: ...
        def _read(self, sql: str, params: Any = ()) -> list[sqlite3.Row]: ...
        def flush(self) -> None: ...

    def create_run(
        self,
        *,
        workload: str,
        config: Mapping[str, Any],
        seed: int,
        name: str | None = None,
        sweep_id: str | None = None,
        data_hash: str | None = None,
        owner: str | None = None,
    ) -> str:
        """Insert a run with status 'created'; return its 8-hex-character id.

        The default name is '<workload>-<n>', n counting this store's runs of that workload.
        With `owner` (lease.current_owner()) the run is leased to that process from the start.
        """
        if not workload or not isinstance(workload, str):
            raise WdlabError("workload must be a non-empty string", field="workload")
        seed = check_int(seed, "seed")
        if not -(2**63) <= seed < 2**63:
            raise WdlabError(f"seed must fit in 64 bits, got {seed}", field="seed")
        config_json = dumps(dict(config), "config")
        versions_json = dumps(_versions(), "versions")
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
                n = int(row[0]) + 1 if row and str(row[0]).isdigit() else 1
                c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(n)))
                run_name = f"{workload}-{n}"
            stamp = now()
            for _ in range(20):
                run_id = _db._new_id()
                if c.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                    continue  # id collision: draw again
                c.execute(
                    "INSERT INTO runs (id, name, workload, status, config, seed, created, "
                    "updated, versions, data_hash, sweep_id, owner, heartbeat) "
                    "VALUES (?, ?, ?, 'created', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        run_name,
                        workload,
                        config_json,
                        seed,
                        stamp,
                        stamp,
                        versions_json,
                        data_hash,
                        sweep_id,
                        owner,
                        stamp if owner else None,
                    ),
                )
                return run_id
            raise RuntimeError("could not draw an unused run id in 20 attempts")

        run_id = self._transact(insert)
        self._known_runs.add(run_id)
        return run_id

    # ----------------------------------------------------------------- leases

    def claim_run(self, run_id: str, owner: str) -> None:
        """Lease the run to `owner` and mark it running, in one transaction. Refused (one
        line, RunBusyError) while another live process holds it."""

        def claim(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise self._unknown_run(run_id)
            holder = row["owner"]
            if holder and holder != owner and lease.alive(holder, parse_time(row["heartbeat"])):
                raise RunBusyError(
                    f"run {run_id} is being trained by another process ({lease.describe(holder)}"
                    f", last heartbeat {row['heartbeat']}); wait for it to end or stop it, then "
                    f"resume with `wdlab run --resume {run_id}`",
                    field="run",
                )
            stamp = now()
            c.execute(
                "UPDATE runs SET owner = ?, heartbeat = ?, status = 'running', updated = ? "
                "WHERE id = ?",
                (owner, stamp, stamp, run_id),
            )

        self._transact(claim)

    def heartbeat_run(self, run_id: str, owner: str) -> bool:
        """Renew `owner`'s lease; False when the run is no longer leased to it."""

        def beat(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE runs SET heartbeat = ? WHERE id = ? AND owner = ?", (now(), run_id, owner)
            )
            return cur.rowcount == 1

        return self._transact(beat)

    # ----------------------------------------------------------------- updates

    def update_run(
        self,
        run_id: str,
        *,
        status: str | None = None,
        result: Mapping[str, Any] | None = None,
        message: str | None = None,
        config: Mapping[str, Any] | None = None,
        release: str | None = None,
    ) -> None:
        """Set the given fields (None leaves a field unchanged) and bump `updated`;
        `release=owner` also ends that owner's lease.

        Buffered metrics are written first, so a run marked finished has all its metrics.
        """
        sets = ["updated = ?"]
        params: list[Any] = [now()]
        if status is not None:
            sets.append("status = ?")
            params.append(check_status(status, RUN_STATUSES, "status"))
        if result is not None:
            sets.append("result = ?")
            params.append(dumps(dict(result), "result"))
        if message is not None:
            sets.append("message = ?")
            params.append(str(message))
        if config is not None:
            sets.append("config = ?")
            params.append(dumps(dict(config), "config"))
        if release is not None:
            sets.append("owner = CASE WHEN owner = ? THEN NULL ELSE owner END")
            params.append(release)
        self.flush()

        def update(c: sqlite3.Connection) -> None:
            cur = c.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*params, run_id))
            if cur.rowcount == 0:
                raise self._unknown_run(run_id)

        self._transact(update)

    # ----------------------------------------------------------------- reads

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
        """Runs matching every given filter, newest first (status as `RunRecord.status`
        reads it: a dead `running` run is `interrupted`)."""
        where, params = [], []
        if workload is not None:
            where.append("workload = ?")
            params.append(workload)
        if status is not None:
            check_status(status, RUN_STATUSES, "status")
            if status in ("running", "interrupted", "created"):
                where.append("status IN (?, ?, ?)")
                params.extend([status, "running", "created"])
            else:
                where.append("status = ?")
                params.append(status)
        if sweep_id is not None:
            where.append("sweep_id = ?")
            params.append(sweep_id)
        if limit is not None:
            limit = check_int(limit, "limit")
            if limit < 0:
                raise WdlabError(f"limit must be >= 0, got {limit}", field="limit")
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC, rowid DESC"
        if limit is not None and status is None:
            sql += f" LIMIT {limit}"
        self.flush()
        records = [self._run_from_row(r) for r in self._read(sql, params)]
        if status is not None:
            records = [r for r in records if r.status == status]
        return records if limit is None else records[:limit]

    def delete_run(self, run_id: str) -> None:
        """Delete a run (exact id) with its metrics and artifact rows; files stay on disk."""
        self.flush()

        def delete(c: sqlite3.Connection) -> None:
            if c.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount == 0:
                raise self._unknown_run(run_id)

        self._transact(delete)
        self._known_runs.discard(run_id)

    def delete_many(self, run_ids: Sequence[str], sweep_ids: Sequence[str] = ()) -> None:
        """Delete runs (exact ids, with their metrics and artifact rows) and sweeps (with
        their trials) in ONE transaction: all of them go, or, on any error, none."""
        self.flush()

        def delete(c: sqlite3.Connection) -> None:
            for run_id in run_ids:
                if c.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount == 0:
                    raise self._unknown_run(run_id)
            for sweep_id in sweep_ids:
                if c.execute("DELETE FROM sweeps WHERE id = ?", (sweep_id,)).rowcount == 0:
                    raise WdlabError(f"no sweep {sweep_id!r} in store {self.path}",
                                     field="sweep_id")

        self._transact(delete)
        self._known_runs.difference_update(run_ids)

    def resume_hint(self, record: RunRecord) -> str | None:
        """The command that continues `record`, or None when it cannot be continued."""
        if record.status not in RESUMABLE:
            return None
        store = "" if self.path == _db.DEFAULT_PATH else f" --store {self.path}"
        return f"wdlab run --resume {record.id}{store}"

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

    def _run_from_row(self, row: sqlite3.Row) -> RunRecord:
        rid = row["id"]

        def column(name: str) -> Any:
            return loads(row[name], self.path, f"runs.{name} of run {rid}")

        try:
            seed = int(row["seed"])
            created = datetime.fromisoformat(row["created"])
            updated = datetime.fromisoformat(row["updated"])
            heartbeat = parse_time(row["heartbeat"])
        except (TypeError, ValueError) as exc:
            raise StoreError(
                f"store {self.path} is damaged: run {rid} has an unreadable seed or timestamp "
                f"({exc}); fix or delete that row with the sqlite3 shell (`sqlite3 {self.path}`)",
                field="store",
            ) from None
        config = column("config")
        if not isinstance(config, dict):
            raise StoreError(
                f"store {self.path} is damaged: runs.config of run {rid} is not a JSON object; "
                f"fix or delete that row with the sqlite3 shell (`sqlite3 {self.path}`)",
                field="store",
            )
        record = RunRecord(
            id=rid,
            name=row["name"],
            workload=row["workload"],
            status=_effective_status(row),
            config=config,
            seed=seed,
            created=created,
            updated=updated,
            versions=column("versions") or {},
            data_hash=row["data_hash"],
            sweep_id=row["sweep_id"],
            result=column("result"),
            message=row["message"],
            owner=row["owner"],
            heartbeat=heartbeat,
        )
        hint = self.resume_hint(record)
        if hint is None:
            return record
        from dataclasses import replace

        return replace(record, resume_hint=hint)

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
                (run_id, kind, os.fspath(path), now()),
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
