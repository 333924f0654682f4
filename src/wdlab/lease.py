"""Who is training a run: an owner token (host, pid, process start time) and a heartbeat.

Why both: on the run's own host a dead pid is certain at once, and the start time tells a
reused pid from the original process; from another host only a heartbeat that stopped
(LEASE_STALE_SECONDS) can tell.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timezone

LEASE_BEAT_SECONDS = 30.0  # how often a training loop renews its lease (between steps)
LEASE_STALE_SECONDS = 300.0  # a lease silent this long is dead (other hosts only)


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is missing)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return fields[19] if len(fields) > 19 else ""


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def current_owner() -> str:
    """This process as a lease owner: 'host:pid:start'."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def parse(owner: str) -> tuple[str, int | None, str]:
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        pid = None
    return host, pid, start


def describe(owner: str) -> str:
    host, pid, _ = parse(owner)
    return f"pid {pid} on host {host}"


def alive(owner: str | None, heartbeat: datetime | None) -> bool:
    """Is the lease holder still there?"""
    if not owner:
        return False
    host, pid, start = parse(owner)
    if host == socket.gethostname() and pid is not None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # someone else's live process
        if _state(pid) in ("Z", "X"):
            return False
        return not start or not _start_time(pid) or _start_time(pid) == start
    if heartbeat is None:
        return False
    age = (datetime.now(timezone.utc) - heartbeat).total_seconds()
    return age < LEASE_STALE_SECONDS
