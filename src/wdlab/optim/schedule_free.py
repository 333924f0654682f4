"""Schedule-Free AdamW and SGD (Defazio et al. 2024, "The Road Less Scheduled"), with
wdlab's decay modes.

Three sequences per parameter: z (the base optimizer's iterate), x (a weighted average of
the z's: what is evaluated) and y = (1-β)·z + β·x (where the gradient is taken). In train
mode the parameter holds y, in eval mode x; `train()` / `eval()` swap in place, as the
`schedulefree` package does. One step, with k the 0-based step and η the lr (times
(k+1)/warmup_steps during the optimizer's own warm-up):

    c   = w_k / Σ_{i≤k} w_i,   w_k = (k+1)^r · (max_{i≤k} η_i)^weight_lr_power
    d   = g/(sqrt(v/(1-β2^{k+1})) + eps)   (AdamW; v = β2·v + (1-β2)·g²)   or   d = g (SGD)
    d  += (rate/η)·y                        the decay, taken at y
    y  ← y + c·(z − y) + η·(β(1−c) − 1)·d   (which is y = (1-β)·z + β·x of the new z and x)
    z  ← z − η·d

β is beta1 (AdamW) or momentum (SGD). With decay="decoupled", rate = η·λ and this is
schedulefree.AdamWScheduleFree / SGDScheduleFree with weight_decay=λ; "independent" uses the
schedule multiplier instead of η; "l2" adds λ·y to g before the moment (the classic penalty).
Decay factors come from wdlab.optim.base.decay_factors, like every wdlab optimizer's.

Differences from the package: a new optimizer starts in train mode (no first `train()` call
needed; calling it is harmless), and gradients are not overwritten. The counters k,
weight_sum and lr_max live in each param group (the package's layout), state holds "z" (and
"exp_avg_sq"), so state_dicts move between the two (the package's groups also want its
"foreach" switch, which ours lack).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from wdlab.optim import _native as native
from wdlab.optim._dispatch import choose, impl_from, pick
from wdlab.optim.base import (
    WdOptimizer,
    check_betas,
    check_range,
    decay_factors,
    group_lr,
)
from wdlab.optim.functional.schedule_free import schedule_free_step

Tensors = list[torch.Tensor]


# ---- the classes ---------------------------------------------------------------------------


class _ScheduleFree(WdOptimizer):
    """Shared bookkeeping: the averaging weights, the train/eval swap, the step."""

    IMPLS = ("reference", "native", "foreach", "compiled")
    ADAM = True
    # A decay target would pull y alone, off y = (1-β)·z + β·x: not offered (docs/optimizers.md).
    TARGETS = ("zero",)

    def _beta(self, group: dict[str, Any]) -> float:
        return group["betas"][0] if self.ADAM else group["momentum"]

    def _check_group(self, group: dict[str, Any]) -> None:
        warmup = group["warmup_steps"]
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup!r}")
        check_range("r", group["r"], 0.0)
        check_range("weight_lr_power", group["weight_lr_power"], 0.0)

    # -- the swap ---------------------------------------------------------------------------

    @torch.no_grad()
    def eval(self) -> None:
        """Parameters to x (the average: what to evaluate and export). Idempotent."""
        self._swap(to_train=False)

    @torch.no_grad()
    def train(self) -> None:
        """Parameters to y (where gradients are taken: call before training). Idempotent."""
        self._swap(to_train=True)

    @property
    def training(self) -> bool:
        """Whether the parameters hold y (train mode) rather than x."""
        return all(group["train_mode"] for group in self.param_groups)

    def _swap(self, to_train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == to_train:
                continue
            beta = self._beta(group)
            # y = (1-β) z + β x, so x = lerp(y, z, 1 - 1/β) and y = lerp(x, z, 1 - β).
            weight = 1 - beta if to_train else 1 - 1 / beta
            for p in group["params"]:
                z = self.state[p].get("z")
                if z is not None:
                    p.lerp_(end=z.to(p.device), weight=weight)
            group["train_mode"] = to_train

    # -- the step ---------------------------------------------------------------------------

    def _check_step(self, group: dict[str, Any]) -> None:
        if not group["train_mode"]:
            raise RuntimeError(
                f"{type(self).__name__}.step() in eval mode (the parameters hold the average "
                "x): call optimizer.train() before training and optimizer.eval() before "
                "evaluating or saving"
            )

    def _step_group(self, group: dict[str, Any], params: Tensors, grads: Tensors) -> None:
        k = group["k"]
        warmup = group["warmup_steps"]
        lr = group_lr(group) * ((k + 1) / warmup if k < warmup else 1.0)
        group["scheduled_lr"] = lr
        lr_max = group["lr_max"] = max(lr, group["lr_max"])
        weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
        weight_sum = group["weight_sum"] = group["weight_sum"] + weight
        ckp1 = weight / weight_sum if weight_sum else 0.0
        decay = decay_factors({**group, "lr": lr})
        if self.ADAM:
            beta1, beta2 = group["betas"]
            eps, bc2 = group["eps"], 1 - beta2 ** (k + 1)
        else:
            beta1, beta2, eps, bc2 = group["momentum"], 0.0, 0.0, 1.0
        zs, vs = [], []
        for p in params:
            state = self.state[p]
            if "z" not in state:
                state["z"] = torch.clone(p, memory_format=torch.preserve_format).detach()
                if self.ADAM:
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            zs.append(state["z"])
            vs.append(state["exp_avg_sq"] if self.ADAM else None)
        hyper = dict(lr=lr, beta=beta1, beta2=beta2, bc2=bc2, eps=eps, l2=decay.l2,
                     wdl=decay.per_lr if decay.rate else 0.0, ckp1=ckp1)
        columns = [params, grads, zs, vs] if self.ADAM else [params, grads, zs]
        plan = choose(group, columns, native.supports, native.why_unavailable)
        for impl, idx in plan:
            schedule_free_step(pick(params, idx), pick(grads, idx), pick(zs, idx),
                               pick(vs, idx), impl=impl, **hyper)
        group["k"] = k + 1


def _counters() -> dict[str, Any]:
    """The per-group counters of the package's layout (also in state_dict's param_groups)."""
    return dict(k=0, train_mode=True, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0)


class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-Free AdamW; decay="decoupled" equals schedulefree.AdamWScheduleFree.

    Defaults are the package's (lr 0.0025, betas (0.9, 0.999), eps 1e-8, weight_decay 0,
    warmup_steps 0, r 0, weight_lr_power 2). Use a constant lr schedule: the averaging
    replaces the decay (the engine's warm-up equals warmup_steps). impl: "auto" (the C
    kernel on contiguous CPU float32/float64, "foreach" on other devices), "reference",
    "native", "foreach", "compiled" (torch.compile, opt-in: seconds of compile at first).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decay: str = "decoupled",
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        *,
        impl: str | None = None,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decay=decay,
                        warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power,
                        impl=impl_from(impl, owner="ScheduleFreeAdamW"), **_counters())
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        check_betas(group["betas"])
        if group["betas"][0] == 0:
            raise ValueError("betas[0] must be in (0, 1) for Schedule-Free (eval() divides by it)")
        check_range("eps", group["eps"], 0.0)


class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-Free SGD; decay="decoupled" equals schedulefree.SGDScheduleFree.

    Defaults are the package's (lr 1.0, momentum 0.9, weight_decay 0, warmup_steps 0, r 0,
    weight_lr_power 2). For SGD, "decoupled" and "l2" give the same update.
    """

    ADAM = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        decay: str = "decoupled",
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        *,
        impl: str | None = None,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, decay=decay,
                        warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power,
                        impl=impl_from(impl, owner="ScheduleFreeSGD"), **_counters())
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        check_range("momentum", group["momentum"], 0.0, 1.0, low_open=True)


def swap_to(optimizer: Any, mode: str) -> bool:
    """Put a Schedule-Free optimizer (wdlab's or the package's: anything with train()/eval()
    and train_mode groups) into "train" or "eval" mode; False (nothing done) for others."""
    groups = getattr(optimizer, "param_groups", None)
    if not groups or "train_mode" not in groups[0] or not callable(getattr(optimizer, mode, None)):
        return False
    getattr(optimizer, mode)()
    return True
