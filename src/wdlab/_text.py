"""Terminal-safe text: stored strings (run and sweep names, messages, errors) may hold
control characters such as ESC, which a terminal would obey. `clean` shows them as escapes.
Torch-free and dependency-free, for every room that prints (CLI, progress, sweep tables)."""

from __future__ import annotations

from typing import Any

# Control characters (C0, DEL, C1) shown as escapes; tab stays a tab.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)] if c != 0x09}
_CONTROL.update({0x0A: "\\n", 0x0D: "\\r"})


def clean(value: Any) -> str:
    """`str(value)` with control characters written as visible escapes (\\n, \\x1b, ...)."""
    return str(value).translate(_CONTROL)
