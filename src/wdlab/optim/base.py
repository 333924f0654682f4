"""Bookkeeping every wdlab optimizer shares: hyperparameter checks and the three decay modes.

The decay modes (REFERENCE.md §1):
  decoupled    w <- w * (1 - lr * wd)           torch.optim.AdamW's meaning
  independent  w <- w * (1 - (lr/initial_lr) * wd)  only the schedule multiplier scales wd
  l2           g <- g + wd * w                   classic coupled L2
Decay is applied before the gradient step; moment buffers see the raw gradient
(or, for l2, the gradient with wd * w added, as in torch's Adam).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

DECAY_MODES = ("decoupled", "independent", "l2")


def check_range(
    name: str,
    value: Any,
    low: float,
    high: float = float("inf"),
    *,
    low_open: bool = False,
    high_open: bool = True,
) -> None:
    """Raise ValueError naming `name` and its allowed range unless low <= value < high."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must be a number in {lo}{low}, {high}{hi}, got {value!r}")


def check_betas(betas: Any, name: str = "betas") -> None:
    """Both coefficients in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2) with each in [0, 1), got {betas!r}")
    for i, beta in enumerate(betas):
        check_range(f"{name}[{i}]", beta, 0.0, 1.0)


def check_decay(decay: Any) -> None:
    if decay not in DECAY_MODES:
        raise ValueError(f"decay must be one of {', '.join(DECAY_MODES)}; got {decay!r}")


def decoupled_decay_rate(group: dict[str, Any]) -> float:
    """The c in w <- w * (1 - c) applied before the step; 0 for l2 (decay is in the gradient)."""
    wd = group["weight_decay"]
    if wd == 0 or group["decay"] == "l2":
        return 0.0
    if group["decay"] == "decoupled":
        return group["lr"] * wd
    initial_lr = group.get("initial_lr", group["lr"])
    # Schedule multiplier s_t = lr / initial_lr; a group starting at lr 0 has no schedule.
    return (group["lr"] / initial_lr) * wd if initial_lr > 0 else 0.0


def l2_coefficient(group: dict[str, Any]) -> float:
    """The wd added as wd * w to the gradient (only in l2 mode)."""
    return group["weight_decay"] if group["decay"] == "l2" else 0.0


class WdOptimizer(torch.optim.Optimizer):
    """Base class: validates common hyperparameters per group and records initial_lr.

    Subclasses call `super().__init__(params, defaults)` and implement `_check_group`
    for their own hyperparameters and `step`.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        defaults.setdefault("decay", "decoupled")
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("initial_lr", group["lr"])
        self._check_common(group)
        self._check_group(group)

    def _check_common(self, group: dict[str, Any]) -> None:
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):
            raise ValueError("lr must be a Python float in wdlab optimizers, got a Tensor")
        check_range("lr", lr, 0.0)
        check_range("weight_decay", group["weight_decay"], 0.0)
        check_decay(group["decay"])
        for p in group["params"]:
            if p.is_complex():
                raise ValueError(
                    f"{type(self).__name__} does not support complex parameters "
                    f"(got one of dtype {p.dtype}); use torch.view_as_real"
                )

    def _check_group(self, group: dict[str, Any]) -> None:
        """Validate optimizer-specific hyperparameters of one group (override)."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A state_dict from torch (or an older wdlab) lacks our keys: fill them from defaults.
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            group.setdefault("initial_lr", group["lr"])

    def _grads_of(self, group: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Parameters with a gradient and their gradients; sparse gradients are refused."""
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError(
                    f"{type(self).__name__} does not support sparse gradients; "
                    "use nn.Embedding(sparse=False)"
                )
            params.append(p)
            grads.append(p.grad)
        return params, grads
