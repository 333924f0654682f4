"""Write a file so that readers and crashes only ever see the old or the new whole file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success fsync it and rename it onto `path`,
    on error remove it. The result gets the usual permissions (0666 minus the umask), not
    mkstemp's 0600."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files atomic_open left beside `path` when its writer was killed
    (SIGKILL skips the cleanup above). Only call it while no other process writes `path`."""
    target = Path(path)
    if not target.parent.is_dir():
        return []
    removed = []
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
