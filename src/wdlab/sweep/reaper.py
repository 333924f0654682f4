"""Ends a local Ray cluster's processes when the sweep that started it dies (Linux).

Ray starts its head processes fate-shared with the driver, but its dashboard and
runtime-env agents only notice a dead raylet through a parent check that then waits on the
(dead) GCS: after a SIGKILLed `wdlab sweep --backend ray` they lived on for over a minute.
This process is started (in its own session) by the driver that owns the cluster. The
driver writes "pid starttime" lines for its descendants; "done" ends the reaper quietly
(the cluster was shut down); end-of-file, which the kernel delivers the moment the driver
dies however it dies, makes it SIGKILL every listed process that still has the same start
time (so a reused pid is never hit).

    python -m wdlab.sweep.reaper     # stdin: the driver's pipe
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys


def process_tree(root: int) -> dict[int, str]:
    """{pid: start time} of every live descendant of `root`, from /proc."""
    parents: dict[int, int] = {}
    starts: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is not None:
            parents[int(entry)] = int(stat[1])
            starts[int(entry)] = stat[19]
    tree: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree[pid] = starts[pid]
                frontier.append(pid)
    return tree


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is the driver's
    listed: dict[int, str] = {}
    for line in sys.stdin:
        if line.strip() == "done":
            return
        pid, _, start = line.strip().partition(" ")
        if pid.isdigit():
            listed[int(pid)] = start
    for pid, start in listed.items():  # end of file: the driver is gone
        stat = _stat(pid)
        if stat is not None and stat[19] == start and stat[0] != "Z":
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
