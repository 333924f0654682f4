"""Built-in workloads, by name."""

from __future__ import annotations

import importlib

from wdlab.workloads.base import Workload

_REGISTRY: dict[str, tuple[str, str]] = {
    "grokking": ("wdlab.workloads.grokking", "Grokking"),
    "charlm": ("wdlab.workloads.charlm", "CharLM"),
    "digits": ("wdlab.workloads.digits", "Digits"),
    "teacher": ("wdlab.workloads.teacher", "Teacher"),
}

__all__ = ["Workload", "available", "get"]


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> type[Workload]:
    """The workload class registered as `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(available())}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)
