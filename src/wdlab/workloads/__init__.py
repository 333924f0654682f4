"""Workloads by name: the built-in ones, and a user's own as `package.module:ClassName`
(wdlab.workloads.user; the Workload API is wdlab.workloads.base.Workload)."""

from __future__ import annotations

import importlib
from typing import Any

from wdlab._suggest import did_you_mean
from wdlab.errors import WdlabError
from wdlab.workloads.base import Workload

_REGISTRY: dict[str, tuple[str, str]] = {
    "grokking": ("wdlab.workloads.grokking", "Grokking"),
    "charlm": ("wdlab.workloads.charlm", "CharLM"),
    "digits": ("wdlab.workloads.digits", "Digits"),
    "teacher": ("wdlab.workloads.teacher", "Teacher"),
}

__all__ = ["Workload", "available", "from_config", "from_torch", "get", "is_builtin", "recipe"]


def available() -> list[str]:
    return sorted(_REGISTRY)


def is_builtin(name: str) -> bool:
    return name in _REGISTRY


def get(name: str) -> type[Workload]:
    """The workload class registered as `name`, or a user's at 'package.module:ClassName'."""
    name = str(name)
    if name in _REGISTRY:
        module, cls = _REGISTRY[name]
        return getattr(importlib.import_module(module), cls)
    from wdlab.workloads import user

    if user.is_import_path(name):
        return user.load(name)
    raise ValueError(
        f"unknown workload {name!r}{did_you_mean(name, available())}; known: "
        f"{', '.join(available())}, or your own as package.module:ClassName"
    )


def recipe(name: str, tiny: bool = False) -> dict[str, Any]:
    """The workload's default settings (a user's recipe() runs guarded: its errors are theirs)."""
    cls = get(name)
    if is_builtin(name):
        return cls.recipe(tiny=tiny)
    from wdlab.workloads import user

    out = user.call(name, "recipe()", cls.recipe, tiny=tiny)
    if not isinstance(out, dict):
        raise WdlabError(f"your workload {name}: recipe() returned a {type(out).__name__}; "
                         "it must return a dict of settings (steps, optimizer, ...)")
    return out


def from_config(config: Any, seed: int | None = None) -> Workload:
    """The workload a RunConfig describes (its model and data sections), seeded with
    `seed`, or with the config's own seed when None."""
    cls = get(config.workload)
    seed = config.seed if seed is None else seed
    model, data = cls.ModelConfig(**config.model), cls.DataConfig(**config.data)
    if is_builtin(config.workload):
        return cls(model, data, seed=seed)
    from wdlab.workloads.user import GuardedWorkload

    return GuardedWorkload.create(config.workload, cls, model, data, seed)  # type: ignore[return-value]


def __getattr__(attr: str) -> Any:
    if attr == "from_torch":  # lazily: the adapter is only for users' own workloads
        from wdlab.workloads.adapter import from_torch

        return from_torch
    raise AttributeError(f"module 'wdlab.workloads' has no attribute {attr!r}")
