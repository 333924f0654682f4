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

# Names users type first, from torch and Hugging Face Trainer's `optim=`: each maps to a
# registered optimizer plus the settings that give the named optimizer's meaning. torch's
# Adam and SGD add weight_decay * w to the gradient (L2), hence decay="l2"; torch's SGD has
# no momentum by default. resolve() applies them as defaults: explicit settings win.
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "adam": ("adamw", {"decay": "l2"}),
    "sgd": ("sgdw", {"decay": "l2", "momentum": 0.0}),
    "adamw_torch": ("adamw", {}),
    "adamw_torch_fused": ("adamw", {}),
    "adamw_hf": ("adamw", {}),
    "torch.optim.adamw": ("adamw", {}),
    "lion_32bit": ("lion", {}),
}

__all__ = [
    "ALIASES",
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
    "resolve",
    "hyperparameters",
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


def resolve(name: str, hparams: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(registered name, hyperparameters) for `name`, an alias resolved: its settings are
    added where `hparams` does not set them. An unknown name raises ValueError with a
    did-you-mean."""
    from wdlab._suggest import did_you_mean

    key = str(name).lower()
    out = dict(hparams or {})
    if key in ALIASES:
        key, settings = ALIASES[key]
        for setting, value in settings.items():
            out.setdefault(setting, value)
    if key not in REGISTRY:
        hint = did_you_mean(str(name), [*REGISTRY, *ALIASES])
        raise ValueError(
            f"unknown optimizer {name!r}{hint}; known: {', '.join(available())} (aliases: "
            f"{', '.join(sorted(ALIASES))})"
        )
    return key, out


def get(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class registered as `name` (case-insensitive; aliases accepted)."""
    return REGISTRY[resolve(name)[0]].load()


def hyperparameters(name: str) -> dict[str, Any]:
    """The optimizer's keyword arguments and their defaults (from its signature; `params`
    and the implementation switches left out)."""
    import inspect

    signature = inspect.signature(get(name).__init__)
    out = {}
    for key, param in signature.parameters.items():
        if key in ("self", "params", "impl", "mode") or param.kind in (
            param.VAR_KEYWORD, param.VAR_POSITIONAL
        ):
            continue
        default = param.default
        out[key] = "required" if default is param.empty or "required" in repr(default) else default
    return out


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
    """Instantiate optimizer `name` (or an alias) over `params` (tensors or group dicts)."""
    key, hparams = resolve(name, hparams)
    return REGISTRY[key].load()(params, **hparams)


def __getattr__(attr: str) -> Any:
    if attr in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[attr]), attr)
    for entry in REGISTRY.values():
        if entry.cls == attr:
            return entry.load()
    raise AttributeError(f"module 'wdlab.optim' has no attribute {attr!r}")
