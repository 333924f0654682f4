"""wdlab's optimizers: a registry of names and one factory.

Classes are imported lazily so that `import wdlab` stays cheap and one optimizer's
import problem does not hide the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import torch

# name -> (module, class)
_REGISTRY: dict[str, tuple[str, str]] = {
    "adamw": ("wdlab.optim.adamw", "AdamW"),
    "sgdw": ("wdlab.optim.sgdw", "SGDW"),
    "lion": ("wdlab.optim.lion", "Lion"),
    "muon": ("wdlab.optim.muon", "Muon"),
    "adamp": ("wdlab.optim.adamp", "AdamP"),
    "sgdp": ("wdlab.optim.adamp", "SGDP"),
    "novograd": ("wdlab.optim.novograd", "NovoGrad"),
    "fadam": ("wdlab.optim.fadam", "FAdam"),
    "scale": ("wdlab.optim.scale", "SCALE"),
}

__all__ = [
    "AdamW",
    "SGDW",
    "Lion",
    "Muon",
    "AdamP",
    "SGDP",
    "NovoGrad",
    "FAdam",
    "SCALE",
    "available",
    "get",
    "create",
    "state_bytes",
    "state_bytes_per_param",
]

# Functions that live beside the optimizers (also imported lazily).
_FUNCTIONS: dict[str, str] = {
    "state_bytes": "wdlab.optim.memory",
    "state_bytes_per_param": "wdlab.optim.memory",
}


def available() -> list[str]:
    """Registered optimizer names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class registered as `name` (case-insensitive)."""
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(available())}")
    module, cls = _REGISTRY[key]
    return getattr(importlib.import_module(module), cls)


def create(name: str, params: Iterable[Any], **hparams: Any) -> torch.optim.Optimizer:
    """Instantiate optimizer `name` over `params` (tensors or param-group dicts)."""
    return get(name)(params, **hparams)


def __getattr__(attr: str) -> Any:
    if attr in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[attr]), attr)
    for module, cls in _REGISTRY.values():
        if cls == attr:
            return getattr(importlib.import_module(module), cls)
    raise AttributeError(f"module 'wdlab.optim' has no attribute {attr!r}")
