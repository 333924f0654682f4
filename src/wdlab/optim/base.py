"""Bookkeeping every wdlab optimizer shares: hyperparameter checks, the three decay modes, the
step loop over param groups and the creation of torch-compatible state.

The decay modes (REFERENCE.md §1):
  decoupled    w <- w * (1 - lr * wd)           torch.optim.AdamW's meaning
  independent  w <- w * (1 - (lr/initial_lr) * wd)  only the schedule multiplier scales wd
  l2           g <- g + wd * w                   classic coupled L2
Decay is applied before the gradient step; moment buffers see the raw gradient
(or, for l2, the gradient with wd * w added, as in torch's Adam).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch

from wdlab.optim.functional import EAGER_MODES, adamw_step

DECAY_MODES = ("decoupled", "independent", "l2")
# Params, grads, exp_avgs, exp_avg_sqs, steps: the lists of an AdamW fallback step.
AdamColumns = tuple[list[torch.Tensor], ...]
# Where a new Adam "step" counter lives: None = torch.tensor(0.0), else float32 on CPU / p's device.
StepDevice = Literal["cpu", "param"] | None


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


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """Raise ValueError naming `name` and the allowed values unless value is one of them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def check_decay(decay: Any) -> None:
    check_choice("decay", decay, DECAY_MODES)


def check_mode(group: dict[str, Any], modes: Sequence[str] = EAGER_MODES) -> None:
    """The group's "mode" is one of `modes` (default: the eager ones, "chunked" or "whole")."""
    check_choice("mode", group["mode"], modes)


def check_bool(group: dict[str, Any], name: str) -> None:
    if not isinstance(group[name], bool):
        raise ValueError(f"{name} must be True or False, got {group[name]!r}")


def check_momentum(group: dict[str, Any]) -> None:
    """SGD-style momentum in [0, 1) and dampening in [0, 1]."""
    check_range("momentum", group["momentum"], 0.0, 1.0)
    check_range("dampening", group["dampening"], 0.0, 1.0, high_open=False)


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
    for their own hyperparameters and `_step_group` for the update; `step` is shared so
    that closure handling and the skipping of gradient-less groups live in one place.
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

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every group that has gradients; returns closure() if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._check_step(group)
            params, grads = self._grads_of(group)
            if params:
                self._step_group(group, params, grads)
        return loss

    def _check_step(self, group: dict[str, Any]) -> None:
        """Refuse group settings (e.g. from a loaded state_dict) the update can't honour."""

    def _step_group(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        """Update `params` (those of `group` with a gradient) in place (override)."""
        raise NotImplementedError

    def _adam_state(
        self,
        p: torch.Tensor,
        keys: tuple[str, str] = ("exp_avg", "exp_avg_sq"),
        *,
        memory_format: torch.memory_format = torch.preserve_format,
        step_device: StepDevice = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """p's (first moment, second moment, "step"), created on first use in torch's layout.

        The moments are zeros like p. "step" is torch.tensor(0.0) (torch's single-tensor
        layout) unless step_device is "cpu" or "param": then a float32 0-d tensor on the CPU
        or on p's device (what torch.optim.AdamW's fused kernels expect).
        """
        state = self.state[p]
        first, second = keys
        if first not in state:
            if step_device is None:
                state["step"] = torch.tensor(0.0)
            else:
                device = p.device if step_device == "param" else torch.device("cpu")
                state["step"] = torch.zeros((), dtype=torch.float32, device=device)
            state[first] = torch.zeros_like(p, memory_format=memory_format)
            state[second] = torch.zeros_like(p, memory_format=memory_format)
        return state[first], state[second], state["step"]

    def _adam_states(
        self,
        params: list[torch.Tensor],
        keys: tuple[str, str] = ("exp_avg", "exp_avg_sq"),
        *,
        memory_format: torch.memory_format = torch.preserve_format,
        step_device: StepDevice = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """`_adam_state` of each param, as three lists (first moments, second moments, steps)."""
        firsts, seconds, steps = [], [], []
        for p in params:
            first, second, step = self._adam_state(
                p, keys, memory_format=memory_format, step_device=step_device
            )
            firsts.append(first)
            seconds.append(second)
            steps.append(step)
        return firsts, seconds, steps

    def _add_to_adamw(self, columns: AdamColumns, p: torch.Tensor, g: torch.Tensor) -> None:
        """Append p, g and p's Adam state to the columns of an AdamW fallback step."""
        for column, value in zip(columns, (p, g, *self._adam_state(p)), strict=True):
            column.append(value)

    @staticmethod
    def _adamw_fallback(
        group: dict[str, Any], columns: AdamColumns, decay_rate: float, l2: float
    ) -> None:
        """AdamW on the params Muon and SCALE route away from their own update.

        Same lr and decay mode as the group; betas and eps from its adamw_betas, adamw_eps.
        """
        if not columns[0]:
            return
        beta1, beta2 = group["adamw_betas"]
        lr = group["lr"]
        # The shared AdamW step decays by lr*weight_decay: give it the wanted rate / lr.
        wd = l2 if l2 else (decay_rate / lr if lr > 0 else 0.0)
        adamw_step(
            *columns,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=group["adamw_eps"],
            weight_decay=wd,
            decoupled=not l2,
        )

    def _buffer(
        self,
        p: torch.Tensor,
        key: str = "momentum_buffer",
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> torch.Tensor:
        """p's zero-initialized buffer state[key], created on first use."""
        state = self.state[p]
        if key not in state:
            state[key] = torch.zeros_like(p, memory_format=memory_format)
        return state[key]

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
