"""Built-in workloads, by name."""

from __future__ import annotations

import importlib
from typing import Any

from wdlab.workloads.base import Workload

_REGISTRY: dict[str, tuple[str, str]] = {
    "grokking": ("wdlab.workloads.grokking", "Grokking"),
    "charlm": ("wdlab.workloads.charlm", "CharLM"),
    "digits": ("wdlab.workloads.digits", "Digits"),
    "teacher": ("wdlab.workloads.teacher", "Teacher"),
}

__all__ = ["Workload", "available", "from_config", "get"]


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> type[Workload]:
    """The workload class registered as `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(available())}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)


def from_config(config: Any, seed: int | None = None) -> Workload:
    """The workload a RunConfig describes (its model and data sections), seeded with
    `seed`, or with the config's own seed when None."""
    cls = get(config.workload)
    return cls(
        cls.ModelConfig(**config.model),
        cls.DataConfig(**config.data),
        seed=config.seed if seed is None else seed,
    )
