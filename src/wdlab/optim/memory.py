"""How many bytes of state an optimizer keeps, also before its first step.

Optimizers create state lazily at the first step, but a memory column (wdlab inspect) is most
useful before training. Decision: a parameter that already has state counts its state tensors'
bytes as they are; one without state counts what its optimizer will create, from the known
state layout of wdlab's optimizers (their registry entries) and torch's
(tests/test_optim_memory.py checks each layout against the state after one step). Any other
optimizer is estimated by stepping a deep copy of it once with zero gradients (memory for one
copy of params and state, for the moment only).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

STEP_BYTES = 4
"""The float32 0-d "step" tensor of torch's Adam-family state."""


def _nbytes(value: Any) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


def _adam(p: torch.Tensor, group: dict[str, Any], cls: type) -> int:
    return 2 * _nbytes(p) + STEP_BYTES


def _muon(p: torch.Tensor, group: dict[str, Any], cls: type) -> int:
    if not cls.uses_muon(p, group):
        return _adam(p, group, cls)
    rows = 0
    if group.get("normuon"):  # NorMuon: one second moment per row (per expert and row)
        split = cls.split_of(p, group)
        rows = p[..., 0].numel() if split is not None and split.kind == "batch" else p.size(0)
    return _nbytes(p) + rows * p.element_size()


def _scale(p: torch.Tensor, group: dict[str, Any], cls: type) -> int:
    kind = cls.update_of(p, group)
    return {"adamw": _adam(p, group, cls), "output": _nbytes(p)}.get(kind, 0)


LAYOUTS: dict[str, Callable[[torch.Tensor, dict[str, Any], type], int]] = {
    "adam": _adam,  # "step" + two moments like p
    "momentum": lambda p, group, cls: _nbytes(p) if group.get("momentum", 0) else 0,
    "buffer": lambda p, group, cls: _nbytes(p),
    "novograd": lambda p, group, cls: _nbytes(p) + STEP_BYTES + p.element_size(),
    "muon": _muon,  # a buffer for orthogonalized matrices, AdamW's state for the rest
    "scale": _scale,  # a buffer for the output layer, AdamW's state for vectors, else none
    "schedule_free": lambda p, group, cls: 2 * _nbytes(p),  # "z" and "exp_avg_sq" like p
}
"""State bytes before the first step, per layout name of wdlab.optim.REGISTRY's entries."""


def _target_bytes(p: torch.Tensor, group: dict[str, Any]) -> int:
    """decay_to="init" | "ema" keeps a copy of p (wdlab.optim.base) where p decays."""
    keeps = group.get("decay_to") in ("init", "ema") and group.get("weight_decay", 0) > 0
    return _nbytes(p) if keeps else 0


def _layout(optimizer: torch.optim.Optimizer, p: torch.Tensor, group: dict[str, Any]) -> int | None:
    """State bytes `optimizer` will create for `p` in `group`; None if the layout is unknown."""
    from wdlab.optim import entry_for

    entry = entry_for(optimizer)
    if entry is not None:
        return LAYOUTS[entry.state](p, group, type(optimizer)) + _target_bytes(p, group)
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return _adam(p, group, type(optimizer)) + (_nbytes(p) if group.get("amsgrad") else 0)
    if isinstance(optimizer, torch.optim.SGD):
        return LAYOUTS["momentum"](p, group, type(optimizer))
    return None


def _probed(optimizer: torch.optim.Optimizer) -> dict[int, int]:
    """State bytes per param index after one zero-gradient step of a deep copy."""
    twin = copy.deepcopy(optimizer)
    params = [p for group in twin.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.zeros_like(p)
    try:
        twin.step()
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot estimate"
        raise ValueError(
            f"state_bytes cannot estimate {type(optimizer).__name__} before its first step "
            f"({exc}); call it after optimizer.step()"
        ) from exc
    return {
        i: sum(_nbytes(v) for v in twin.state.get(p, {}).values()) for i, p in enumerate(params)
    }


def _wrapper_bytes(wrapper: Any) -> int:
    """A wrapper's own state: what it holds, or for targets without it yet, one value per row."""
    from wdlab.optim.wrappers import NormGrowthLimiter, rows_of

    total = 0
    for p in getattr(wrapper, "targets", []):
        held = wrapper.wrapper_state.get(p)
        if held:
            total += sum(_nbytes(v) for v in held.values())
        elif isinstance(wrapper, NormGrowthLimiter):
            total += 8  # "prev_norm", float64
        else:  # LAWN before the end of its warm phase: "norm" per row
            total += rows_of(p, wrapper.per).size(0) * p.element_size()
    return total


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of optimizer state over all its params (see the module docstring for the estimate).

    Wrappers (wdlab.optim.wrappers) count the inner optimizer's state plus their own.
    """
    from wdlab.optim.wrappers import OptimizerWrapper

    if isinstance(optimizer, OptimizerWrapper):
        return state_bytes(optimizer.optimizer) + _wrapper_bytes(optimizer)
    total, probe = 0, None
    index = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            held = optimizer.state.get(p)
            if held:
                total += sum(_nbytes(v) for v in held.values())
            else:
                expected = _layout(optimizer, p, group)
                if expected is None:
                    probe = _probed(optimizer) if probe is None else probe
                    expected = probe[index]
                total += expected
            index += 1
    return total


def state_bytes_per_param(optimizer: torch.optim.Optimizer) -> float:
    """state_bytes divided by the number of parameter elements (AdamW fp32: about 8)."""
    numel = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    return state_bytes(optimizer) / numel if numel else 0.0
