"""Opening the run store from a command: read-only commands never create one, and writing
commands never create directories the user did not ask for."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from wdlab.errors import WdlabError


def runs_root(store_path: str | os.PathLike[str]) -> Path:
    """Checkpoints live beside the store, one folder per run."""
    return Path(store_path).resolve().parent / "wdlab-runs"


def check_writable_path(path: str) -> None:
    """A store may be created at `path`: its directory exists and it is not a directory."""
    target = Path(path)
    if target.is_dir():
        raise WdlabError(
            f"--store {path} is a directory; pass a file path such as "
            f"{os.path.join(path, 'wdlab.db')}",
            field="store",
        )
    parent = target.parent
    if not parent.is_dir():
        raise WdlabError(
            f"--store {path}: directory {parent} does not exist; create it "
            f"(mkdir -p {parent}) or pass another --store",
            field="store",
        )


def open_existing(path: str) -> Any:
    """The Store at `path`, which must already exist (read-only commands): never creates a
    file or a directory."""
    if Path(path).is_file():
        _refuse_foreign_database(path)
    from wdlab.store import Store

    return Store.open_existing(path)


def _refuse_foreign_database(path: str) -> None:
    """An SQLite file without wdlab's `meta` table is refused after a read-only look: opening
    it as a store would switch it to WAL mode, i.e. change someone else's database."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {row[0] for row in rows}
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return  # not SQLite, or damaged: the Store says which, without writing
    if tables and "meta" not in tables:
        raise WdlabError(
            f"{path} is an SQLite database but not a wdlab store (no meta table; it has "
            f"{', '.join(sorted(tables)[:5])}); pass another --store path",
            field="store",
        )


def open_for_writing(path: str) -> Any:
    """The Store at `path`, created there if it does not exist yet."""
    check_writable_path(path)
    from wdlab.store import Store

    return Store(path)


class LazyStore:
    """A Store opened on first use, so that a run that fails before it starts (bad model
    size, probe input) leaves no new store file behind. Remembers the run it creates, so an
    interrupted run can name the command that resumes it."""

    def __init__(self, path: str) -> None:
        check_writable_path(path)
        self.path = path
        self.created_run: str | None = None
        self._store: Any = None

    def _open(self) -> Any:
        if self._store is None:
            from wdlab.store import Store

            self._store = Store(self.path)
        return self._store

    def create_run(self, *args: Any, **kwargs: Any) -> str:
        self.created_run = self._open().create_run(*args, **kwargs)
        return self.created_run

    def __getattr__(self, name: str) -> Any:
        return getattr(self._open(), name)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> LazyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
