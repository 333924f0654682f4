"""Did-you-mean for names users type (subcommands, optimizers, workloads, config keys).

Torch-free and dependency-free (difflib), so the CLI can use it before anything heavy loads.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice most like `name` (case-insensitive), or None when none is close."""
    options = list(choices)
    lowered = {c.lower(): c for c in options}
    match = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=cutoff)
    return lowered[match[0]] if match else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """'; did you mean 'x'?' when a choice is close to `name`, else ''."""
    match = closest(name, choices)
    return f"; did you mean {match!r}?" if match else ""
