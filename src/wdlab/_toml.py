"""A resolved config tree written as TOML that `--config FILE` reads back (tomllib is
read-only and the config needs only tables, scalars and lists, so no writer dependency)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # JSON string escapes are TOML's


def _key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def dumps(tree: Mapping[str, Any]) -> str:
    """TOML text of a nested dict: top-level scalars first, then one [table] per section.
    None values (unset) are written as comments, since TOML has no null."""
    lines: list[str] = []

    def scalars(node: Mapping[str, Any]) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                continue
            if value is None:
                lines.append(f"# {_key(key)} = (unset)")
            else:
                lines.append(f"{_key(key)} = {_value(value)}")

    def tables(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                name = f"{prefix}{_key(key)}"
                lines.extend(["", f"[{name}]"])
                scalars(value)
                tables(value, f"{name}.")

    scalars(tree)
    tables(tree, "")
    return "\n".join(lines).lstrip("\n") + "\n"
