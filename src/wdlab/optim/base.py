"""Bookkeeping every wdlab optimizer shares: hyperparameter checks, the decay modes and decay
targets, the step loop over param groups and the creation of torch-compatible state.

The decay modes (REFERENCE.md §1):
  decoupled    w <- w * (1 - lr * wd)           torch.optim.AdamW's meaning
  independent  w <- w * (1 - (lr/initial_lr) * wd)  only the schedule multiplier scales wd
  corrected    w <- w * (1 - lr**2 * wd / initial_lr)  Defazio et al. 2025 (AdamC): the
               decoupled λ scaled by lr/lr_max, so λ_t/η_t stays fixed as the lr anneals
  l2           g <- g + wd * w                   classic coupled L2
Decay is applied before the gradient step; moment buffers see the raw gradient
(or, for l2, the gradient with wd * w added, as in torch's Adam).

The decay target (decay_to): decay pulls w toward 0 ("zero", the default and the kernels' own
w*(1 - c)), toward the weights at the group's first step ("init"), toward an EMA of the weights
(coefficient decay_ema, "ema") or toward 1 ("one", for norm gains):  w <- w - c*(w - target);
in l2 mode g <- g + wd*(w - target). A non-zero target runs here, before the optimizer's own
update, which then sees weight_decay 0: every optimizer and impl gets it the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from wdlab._names import DECAY_MODES, DECAY_TARGETS
from wdlab.optim._dispatch import check_impl, choose, impl_from, pick
from wdlab.optim.distributed import any_dtensor
from wdlab.optim.functional import adamw_foreach, adamw_step

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


def check_decay_target(group: dict[str, Any]) -> None:
    """decay_to one of DECAY_TARGETS and decay_ema (the "ema" target's coefficient) in [0, 1)."""
    check_choice("decay_to", group["decay_to"], DECAY_TARGETS)
    check_range("decay_ema", group["decay_ema"], 0.0, 1.0)


def check_bool(group: dict[str, Any], name: str) -> None:
    if not isinstance(group[name], bool):
        raise ValueError(f"{name} must be True or False, got {group[name]!r}")


def check_momentum(group: dict[str, Any]) -> None:
    """SGD-style momentum in [0, 1) and dampening in [0, 1]."""
    check_range("momentum", group["momentum"], 0.0, 1.0)
    check_range("dampening", group["dampening"], 0.0, 1.0, high_open=False)


@dataclass(frozen=True)
class Decay:
    """What a group's decay mode asks of one step (REFERENCE.md §1).

    rate    c in w <- w*(1 - c) before the step (0 in l2 mode)
    l2      the coefficient of wd*w added to the gradient (0 unless l2 mode)
    per_lr  rate/lr, i.e. torch.optim.AdamW's weight_decay (torch's kernels multiply by lr)
    """

    rate: float
    l2: float
    per_lr: float


def group_lr(group: dict[str, Any]) -> float:
    """The group's lr as a Python float; a tensor lr (a CPU 0-d tensor, torch's recipe for
    compiled optimizers) is read once here, on the host."""
    lr = group["lr"]
    return float(lr) if isinstance(lr, torch.Tensor) else lr


def decay_factors(group: dict[str, Any]) -> Decay:
    """The one place decay is computed: the group's mode and lr turned into a Decay.

      decoupled    c = lr*wd
      independent  c = (lr/initial_lr)*wd   (the schedule multiplier; a group starting at
                                             lr 0 has no schedule and no decay)
      corrected    c = lr*(lr/initial_lr)*wd (AdamC: λ_t = λ·η_t/η_max with η_max the
                                             group's initial_lr, which torch's schedulers
                                             set to the base lr; without a scheduler lr ==
                                             initial_lr and this is "decoupled")
      l2           gradient += wd*w
    """
    wd, mode = group["weight_decay"], group["decay"]
    lr = group_lr(group)
    if wd == 0:
        return Decay(0.0, 0.0, 0.0)
    if mode == "l2":
        return Decay(0.0, wd, 0.0)
    if mode == "decoupled":
        return Decay(lr * wd, 0.0, wd)
    initial_lr = group.get("initial_lr", lr)
    if isinstance(initial_lr, torch.Tensor):
        initial_lr = float(initial_lr)
    if initial_lr <= 0:
        return Decay(0.0, 0.0, 0.0)
    if mode == "corrected":
        per_lr = wd * (lr / initial_lr)
        return Decay(lr * per_lr, 0.0, per_lr)
    return Decay((lr / initial_lr) * wd, 0.0, wd / initial_lr)


def decoupled_decay_rate(group: dict[str, Any]) -> float:
    """decay_factors(group).rate: the c in w <- w*(1 - c) applied before the step."""
    return decay_factors(group).rate


def l2_coefficient(group: dict[str, Any]) -> float:
    """decay_factors(group).l2: the wd added as wd*w to the gradient (only in l2 mode)."""
    return decay_factors(group).l2


def _initial(lr: Any) -> Any:
    """initial_lr as torch's schedulers record it: a tensor lr is copied, not aliased."""
    return lr.clone() if isinstance(lr, torch.Tensor) else lr


class WdOptimizer(torch.optim.Optimizer):
    """Base class: validates common hyperparameters per group and records initial_lr.

    Subclasses call `super().__init__(params, defaults)` and implement `_check_group`
    for their own hyperparameters and `_step_group` for the update; `step` is shared so
    that closure handling and the skipping of gradient-less groups live in one place.
    """

    IMPLS: tuple[str, ...] = ("reference", "foreach")
    """The concrete implementations this optimizer has, besides "auto" (see _dispatch.py)."""

    TARGETS: tuple[str, ...] = DECAY_TARGETS
    """The decay_to targets this optimizer honours (Schedule-Free: "zero" only)."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        defaults.setdefault("decay", "decoupled")
        defaults.setdefault("decay_to", "zero")
        defaults.setdefault("decay_ema", 0.999)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if "mode" in group and "impl" in self.defaults:  # the older name of impl
            group["impl"] = impl_from(None, mode=group.pop("mode"), owner=type(self).__name__)
        group.setdefault("initial_lr", _initial(group["lr"]))
        self._check_common(group)
        self._check_group(group)

    def _check_common(self, group: dict[str, Any]) -> None:
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):
            if lr.numel() != 1 or not lr.is_floating_point() or lr.device.type != "cpu":
                raise ValueError(
                    "a Tensor lr must be one floating-point element on the CPU (e.g. "
                    f"torch.tensor(1e-3)); got shape {tuple(lr.shape)}, {lr.dtype} on {lr.device}"
                )
            lr = float(lr)
        check_range("lr", lr, 0.0)
        check_range("weight_decay", group["weight_decay"], 0.0)
        check_decay(group["decay"])
        check_decay_target(group)
        if group["decay_to"] not in self.TARGETS:
            raise ValueError(
                f"{type(self).__name__} supports decay_to={', '.join(self.TARGETS)} only, got "
                f"{group['decay_to']!r}; use decay_to='zero' with it"
            )
        if "impl" in group:
            check_impl(group, self.IMPLS, type(self).__name__)
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
            if "mode" in group and "impl" in self.defaults and "impl" not in group:
                group["impl"] = impl_from(None, mode=group.pop("mode"), owner=type(self).__name__)
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            group.setdefault("initial_lr", _initial(group["lr"]))

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
            if not params:
                continue
            if group["decay_to"] == "zero" or group["weight_decay"] == 0:
                self._step_group(group, params, grads)
            else:
                grads = self.decay_before_update(group, params, grads)
                # The decay is done: the optimizer's own update runs without it.
                self._step_group(dict(group, weight_decay=0.0), params, grads)
            self.decay_after_update(group, params)
        return loss

    def _decay_target(self, group: dict[str, Any], p: torch.Tensor) -> torch.Tensor | None:
        """p's decay target: None for "zero" and "one" (constants); a copy of p, taken at the
        first step that reaches p, for "init" and "ema" (state["decay_target"], checkpointed)."""
        if group["decay_to"] in ("zero", "one"):
            return None
        state = self.state[p]
        if "decay_target" not in state:
            state["decay_target"] = p.detach().clone(memory_format=torch.preserve_format)
        return state["decay_target"]

    def decay_before_update(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """The group's decay on its own, toward its target: w <- w - c*(w - target) in the
        decoupled modes; returns the gradients for the update (in l2 mode new tensors
        g + wd*(w - target), p.grad itself is left as it is). Wrappers that take the decay out
        of the update (wdlab.optim.wrappers) call this and decay_after_update themselves."""
        decay = decay_factors(group)
        targets = [self._decay_target(group, p) for p in params]
        constant = 1.0 if group["decay_to"] == "one" else 0.0
        if decay.l2:
            return [
                g.add(p.detach() - (constant if t is None else t), alpha=decay.l2)
                for p, g, t in zip(params, grads, targets, strict=True)
            ]
        if decay.rate:  # multi-tensor ops: a few kernels per group on a device, none per tensor
            weights = list(params)  # in place under step()'s no_grad: no detach op per tensor
            if group["decay_to"] in ("init", "ema"):
                torch._foreach_lerp_(weights, targets, decay.rate)
            elif constant and not any_dtensor(weights):  # one pass, w.lerp_(1, c)
                torch._foreach_lerp_(weights, self._ones_like(weights), decay.rate)
            else:  # toward 0; toward 1 on DTensor shards (a plain ones view does not mix)
                torch._foreach_mul_(weights, 1.0 - decay.rate)
                if constant:
                    torch._foreach_add_(weights, decay.rate * constant)
        return grads

    def _ones_like(self, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """Stride-0 views of a single 1 shaped like each weight, cached per (dtype, device,
        shape): decay_to="one" becomes one read-write pass (lerp), and steps after the first
        make no new tensors (no op per tensor on a device)."""
        cache = self.__dict__.setdefault("_ones_views", {})
        out = []
        for w in weights:
            key = (w.dtype, w.device, tuple(w.shape))
            view = cache.get(key)
            if view is None:
                view = cache[key] = torch.ones((), dtype=w.dtype, device=w.device).expand(w.shape)
            out.append(view)
        return out

    def decay_after_update(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """After the update: the "ema" target follows the weights, t <- β*t + (1 - β)*w (also
        on steps where a wd schedule has weight_decay at 0, once the target exists)."""
        if group["decay_to"] != "ema":
            return
        pairs = [(t, p) for p in params
                 if (t := self.state[p].get("decay_target")) is not None]
        if pairs:
            torch._foreach_lerp_([t for t, _ in pairs], [w for _, w in pairs],
                                 1.0 - group["decay_ema"])

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
        else:
            # A counter left by another impl (or torch's fused layout): move it, once.
            want = p.device if step_device == "param" else torch.device("cpu")
            if state["step"].device != want:
                state["step"] = state["step"].to(want)
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
        The group's impl picks the path per device: "foreach" (auto off the CPU) or the shared
        AdamW step (torch's fused kernel where it runs).
        """
        if not columns[0]:
            return
        beta1, beta2 = group["adamw_betas"]
        # torch's weight_decay meaning: the kernels decay by lr*weight_decay.
        wd = l2 if l2 else (decay_factors(group).per_lr if decay_rate else 0.0)
        hyper = dict(lr=group_lr(group), beta1=beta1, beta2=beta2, eps=group["adamw_eps"],
                     weight_decay=wd, decoupled=not l2)
        impl = group.get("impl", "auto")
        plan = choose({"impl": "auto" if impl == "auto" else "reference"}, columns, None)
        for chosen, idx in plan:
            part = [pick(column, idx) for column in columns]
            if chosen == "foreach" or impl == "foreach":
                adamw_foreach(*part, **hyper)
            else:  # "reference": torch's fused kernel itself, not kernels.c's copy
                adamw_step(*part, **hyper, own_kernel=impl != "reference")

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
