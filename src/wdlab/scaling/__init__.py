"""Width-scaling rules: how learning rate, weight decay, init and multipliers follow width.

rules.py holds the arithmetic (torch-free; docs/scaling.md and REFERENCE.md §1, §4 explain
every rule); init.py applies a rule's init and multipliers to a model. The names of both
are importable from here: `from wdlab.scaling import RULES, apply_init` (init.py, which
needs torch, loads on first use).
"""

from __future__ import annotations

from typing import Any

from wdlab.scaling.rules import (
    DECAY_MODES,
    INIT_RULES,
    RULES,
    SCALE_ROLES,
    SP_INITS,
    RoleScale,
    check_scaling,
    role_scales,
    transfer_table,
)

__all__ = [
    "RULES",
    "INIT_RULES",
    "SCALE_ROLES",
    "DECAY_MODES",
    "SP_INITS",
    "RoleScale",
    "check_scaling",
    "role_scales",
    "transfer_table",
    "apply_init",
    "default_sp_init",
    "scaled_settings",
]

_LAZY = {"apply_init": "wdlab.scaling.init", "default_sp_init": "wdlab.scaling.init",
         "scaled_settings": "wdlab.groups"}


def __getattr__(attr: str) -> Any:  # init.py imports torch and groups: load it on first use
    if attr in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[attr]), attr)
    raise AttributeError(f"module 'wdlab.scaling' has no attribute {attr!r}")
