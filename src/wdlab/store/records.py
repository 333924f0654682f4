"""What the store hands back (frozen records) and how its JSON and time columns are read.

Why one place: JSON that is not JSON (a hand edit, a damaged row) or a float that JSON cannot
hold (NaN, inf) is handled the same way in every table: written as null, read back as a
one-line StoreError that names the store, the row and the fix.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from wdlab.errors import StoreError, WdlabError


@dataclass(frozen=True)
class RunRecord:
    """One training run; JSON columns are parsed, timestamps are aware UTC datetimes.

    `status` is what the run is now: a run stored as `running` whose process is gone (same
    host: its pid is dead; another host: no heartbeat for LEASE_STALE_SECONDS) reads as
    `interrupted`. `resume_hint` is the command that continues it, when it can be continued.
    """

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
    owner: str | None = None
    heartbeat: datetime | None = None
    resume_hint: str | None = None


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
    identity: str | None = None


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


def now() -> str:
    # One fixed ISO format in UTC so that text order is time order (ORDER BY created works).
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")


def parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _finite(value: Any) -> Any:
    """A copy with every non-finite float replaced by None (JSON has no NaN or inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any, field: str) -> str:
    """Strict JSON (NaN and inf become null, so SQLite's json functions can read it)."""
    try:
        return json.dumps(_finite(value), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise WdlabError(
            f"{field} must be JSON-serializable (dicts, lists, str, numbers, bool, None): {exc}",
            field=field,
        ) from exc


def loads(text: str | None, path: str, where: str) -> Any:
    """Parse a JSON column; a damaged value is one line naming the row and the fix."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"store {path} is damaged: {where} is not valid JSON ({exc}); fix or delete that "
            f"row with the sqlite3 shell (`sqlite3 {path}`), or pass another --store path",
            field="store",
        ) from None


def check_status(status: str, allowed: Sequence[str], field: str) -> str:
    if status not in allowed:
        raise WdlabError(
            f"{field}={status!r} is not allowed; use one of {', '.join(allowed)}", field=field
        )
    return status


def check_int(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise WdlabError(f"{field} must be an integer, got {value!r}", field=field)
    try:
        return operator.index(value)
    except TypeError:
        raise WdlabError(f"{field} must be an integer, got {value!r}", field=field) from None
