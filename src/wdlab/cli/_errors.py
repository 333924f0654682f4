"""Which exceptions a user caused, and the one line that says so.

`main` (the one error boundary) asks `user_message` about every exception a command raises:
a message means "the user's to fix" (one line, exit 2), None means a bug, which keeps its
traceback so that it stays visible. Only errors with a cause outside wdlab's code are
mapped: wdlab's own WdlabError, an error raised in the user's own workload code
(UserCodeError: their traceback is printed above the line), a corrupt or locked store,
memory the machine does not have, and files the operating system refused.
"""

from __future__ import annotations

import errno
import sqlite3
from typing import Any

from wdlab.errors import UserCodeError, WdlabError

# sqlite3.OperationalError messages that come from the file or the machine, not from SQL.
_SQLITE_ENVIRONMENT = (
    "database is locked",
    "disk i/o error",
    "database or disk is full",
    "readonly database",
    "unable to open database file",
    "no such table",  # a tampered store: its tables were dropped
    "no such column",
)
_OS_ERRNOS = {
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENOSPC,
    errno.EROFS,
    errno.EEXIST,
    errno.ENAMETOOLONG,
}


def is_allocation_error(exc: BaseException) -> bool:
    """Memory the machine (CPU RAM or the GPU) cannot give."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


def _store_path(args: Any) -> str:
    return str(getattr(args, "store", None) or "the store")


def user_traceback(exc: BaseException) -> str | None:
    """The traceback to show above the one line: only for an error in the user's own code
    (their workload module), and only their frames."""
    return exc.traceback_text if isinstance(exc, UserCodeError) else None


def user_message(exc: BaseException, args: Any = None) -> str | None:
    """The one line for an error the user can fix, or None for a bug."""
    if isinstance(exc, (WdlabError, UserCodeError)):
        return str(exc)
    if is_allocation_error(exc):
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return (
            f"out of memory ({first[:200]}); make the model or batch smaller "
            "(e.g. --set model.width=..., --set data.batch_size=...)"
        )
    if isinstance(exc, sqlite3.DatabaseError):
        path = _store_path(args)
        text = str(exc)
        if type(exc) is sqlite3.DatabaseError:  # SQLITE_CORRUPT, SQLITE_NOTADB
            return (
                f"store {path} is damaged ({text}); recover what it holds with "
                f"`sqlite3 {path} .recover | sqlite3 recovered.db` and pass --store recovered.db"
            )
        if isinstance(exc, sqlite3.OperationalError) and any(
            pattern in text.lower() for pattern in _SQLITE_ENVIRONMENT
        ):
            return (
                f"store {path}: {text}; check the file and its directory, "
                "or pass another --store"
            )
        return None
    if isinstance(exc, OSError) and exc.errno in _OS_ERRNOS and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}; check the path and its permissions"
    return None
