"""wdlab's optimizers: the registry (one entry per optimizer) and one factory.

Each Entry says, as data, what the rest of wdlab needs to know about an optimizer: where its
class lives, the layout of its state (wdlab.optim.memory counts bytes from it before the
first step), which equilibrium prediction applies (wdlab.optim.equilibrium), and the search
space and fixed settings of the optimizer benchmark (wdlab.bench). Adding an optimizer is its
file plus its entry here. Classes are imported lazily so that `import wdlab` stays cheap and
one optimizer's import problem does not hide the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch-free at import: the CLI builds its parser from wdlab.bench
    import torch

Range = tuple[float, float]


@dataclass(frozen=True)
class Entry:
    """One registered optimizer.

    state: the state layout, a key of wdlab.optim.memory.LAYOUTS ("adam": step + two moments
      like p; "momentum": a buffer like p when momentum > 0; "buffer": always one; "novograd",
      "muon", "scale": their own mixes).
    equilibrium: the kind of wdlab.optim.equilibrium's rotational-equilibrium prediction
      ("sgdw", "adamw", "lion", "adamp", "sgdp"), None where none is derived.
    lr_range, wd_range: the benchmark's log-uniform search ranges. Adam-like updates have RMS
      ~1 per coordinate; Lion's sign update is larger, so its lr is 10x smaller and its
      decoupled wd 10x larger (same lr*wd, the decay timescale, REFERENCE §1); SGD-like updates
      scale with the gradient: lr 10x larger, wd 10x smaller.
    settings: fixed `key=value` settings the benchmark adds on top of a workload's recipe.
    """

    name: str
    module: str
    cls: str
    state: str
    equilibrium: str | None
    lr_range: Range = (1e-4, 1e-2)
    wd_range: Range = (1e-3, 1.0)
    settings: tuple[str, ...] = ()

    def load(self) -> type[torch.optim.Optimizer]:
        return getattr(importlib.import_module(self.module), self.cls)


_SGD_RANGES = {"lr_range": (1e-3, 1e-1), "wd_range": (1e-4, 0.1)}
REGISTRY: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry("adamw", "wdlab.optim.adamw", "AdamW", "adam", "adamw"),
        Entry("sgdw", "wdlab.optim.sgdw", "SGDW", "momentum", "sgdw", **_SGD_RANGES),
        Entry("lion", "wdlab.optim.lion", "Lion", "buffer", "lion", (1e-5, 1e-3), (1e-2, 10.0),
              ("optimizer.betas=[0.9, 0.99]",)),  # Lion's paper betas, not the recipe's AdamW's
        # match_rms_adamw: the update RMS is AdamW's, so AdamW's ranges apply
        Entry("muon", "wdlab.optim.muon", "Muon", "muon", None),
        Entry("normuon", "wdlab.optim.muon", "NorMuon", "muon", None),
        Entry("muon-pe", "wdlab.optim.muon", "PolarExpressMuon", "muon", None),
        Entry("normuon", "wdlab.optim.muon", "NorMuon", "muon", None),
        Entry("adamp", "wdlab.optim.adamp", "AdamP", "adam", "adamp"),
        Entry("sgdp", "wdlab.optim.adamp", "SGDP", "momentum", "sgdp", **_SGD_RANGES),
        Entry("novograd", "wdlab.optim.novograd", "NovoGrad", "novograd", None, **_SGD_RANGES),
        Entry("fadam", "wdlab.optim.fadam", "FAdam", "adam", None),
        Entry("scale", "wdlab.optim.scale", "SCALE", "scale", None, **_SGD_RANGES),
        # Schedule-Free: its averaging replaces the lr decay, so the benchmark holds lr constant
        # (after the recipe's warm-up). SGD's lr is ~10x SGDW's (Defazio et al. 2024).
        Entry("sf_adamw", "wdlab.optim.schedule_free", "ScheduleFreeAdamW", "schedule_free",
              None, (3e-4, 3e-2), settings=("schedule.kind=constant",)),
        Entry("sf_sgd", "wdlab.optim.schedule_free", "ScheduleFreeSGD", "buffer", None,
              (1e-2, 1.0), (1e-5, 1e-2), ("schedule.kind=constant",)),
    )
}

__all__ = [
    "AdamW",
    "SGDW",
    "Lion",
    "Muon",
    "NorMuon",
    "AdamP",
    "SGDP",
    "NovoGrad",
    "FAdam",
    "SCALE",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "Entry",
    "REGISTRY",
    "available",
    "entry_for",
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
    return sorted(REGISTRY)


def get(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class registered as `name` (case-insensitive)."""
    key = name.lower()
    if key not in REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(available())}")
    return REGISTRY[key].load()


def entry_for(optimizer: torch.optim.Optimizer) -> Entry | None:
    """The registry entry of `optimizer`'s class (or of its nearest registered base class);
    None for optimizers wdlab did not register (torch's, a user's)."""
    by_class = {}
    for entry in REGISTRY.values():
        try:
            by_class[entry.load()] = entry
        except Exception:  # noqa: BLE001 - an optimizer that fails to import is just unknown
            continue
    for cls in type(optimizer).__mro__:
        if cls in by_class:
            return by_class[cls]
    return None


def create(name: str, params: Iterable[Any], **hparams: Any) -> torch.optim.Optimizer:
    """Instantiate optimizer `name` over `params` (tensors or param-group dicts)."""
    return get(name)(params, **hparams)


def __getattr__(attr: str) -> Any:
    if attr in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[attr]), attr)
    for entry in REGISTRY.values():
        if entry.cls == attr:
            return entry.load()
    raise AttributeError(f"module 'wdlab.optim' has no attribute {attr!r}")
