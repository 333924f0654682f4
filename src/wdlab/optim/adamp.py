"""AdamP and SGDP: slow the effective-step-size decay of momentum on scale-invariant weights.

Heo et al., "Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights"
(clovaai/AdamP). Momentum keeps a radial component that only grows a scale-invariant weight's
norm, and so shrinks its effective lr (REFERENCE.md §2). For each tensor with ndim > 1 a cosine
test between gradient and weight decides whether it is scale-invariant per output channel
("channel" view) or as a whole ("layer" view); if one passes, the radial part of the update is
projected out per row and the decay is multiplied by wd_ratio.

Order of one step, as clovaai's: scale-invariance test on the raw gradient and the current
weight; moment/momentum buffers; update direction; projection (with the weight before decay);
decay w <- w*(1 - c); update. How the decay modes combine with the projection:
  decoupled    c = lr*wd*r           (clovaai's only mode; r = wd_ratio if projected, else 1)
  independent  c = (lr/initial_lr)*wd*r
  l2           gradient + wd*r*w enters the buffers; the cosine test still uses the raw gradient
SGDP's c is further divided by (1 - momentum), as clovaai does: the decoupled decay then equals
the steady-state pull of L2 through a momentum buffer. In l2 mode momentum already does that.

impl: "native" (what "auto" runs on CPU) uses torch's fused Adam/SGD kernels for the moments
and kernels.c for the cosine test where the tensors allow; "reference" is the plain per-op
path; "foreach" (auto off the CPU) makes the test and the projection torch.where masks over
stacked same-shape matrices, with no host sync; "compiled" (opt-in: seconds of compile on
the first step) runs each tensor's test, projection and update as one torch.compile'd graph,
the decision as masks there too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from wdlab.optim._dispatch import choose, impl_from, pick
from wdlab.optim.base import (
    WdOptimizer,
    check_betas,
    check_bool,
    check_momentum,
    check_range,
    decay_factors,
    group_lr,
)
from wdlab.optim.functional import (
    adamp_compiled,
    adamp_foreach,
    adamp_step,
    sgdp_compiled,
    sgdp_foreach,
    sgdp_step,
)


def _on_cpu(params: list[torch.Tensor]) -> bool:
    return all(p.device.type == "cpu" for p in params)


def _why_not_cpu() -> str:
    return "the native path (torch's fused CPU kernels + kernels.c) needs CPU tensors"


def _check_projection(group: dict[str, Any]) -> None:
    """Hyperparameters AdamP and SGDP share: eps, delta, wd_ratio, nesterov."""
    check_range("eps", group["eps"], 0.0)
    check_range("delta", group["delta"], 0.0)
    check_range("wd_ratio", group["wd_ratio"], 0.0, 1.0, high_open=False)
    check_bool(group, "nesterov")


class AdamP(WdOptimizer):
    """Adam with decoupled decay and projection of the radial update on scale-invariant weights.

    Update direction: exp_avg/denom with denom = sqrt(exp_avg_sq)/sqrt(1 - beta2^t) + eps, or
    with Nesterov (beta1*exp_avg + (1 - beta1)*g)/denom; step size lr/(1 - beta1^t). With
    nothing projected and decay="decoupled" this is torch.optim.AdamW. State: "step",
    "exp_avg", "exp_avg_sq" (torch's names). See the module docstring for the decay modes.
    """

    IMPLS = ("reference", "native", "foreach", "compiled")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decay: str = "decoupled",
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
        *,
        decay_to: str = "zero",
        decay_ema: float = 0.999,
        impl: str = "auto",
    ) -> None:
        defaults = dict(
            impl=impl_from(impl, owner="AdamP"),
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decay=decay,
            decay_to=decay_to,
            decay_ema=decay_ema,
            delta=delta,
            wd_ratio=wd_ratio,
            nesterov=nesterov,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_betas(group["betas"])
        _check_projection(group)

    def _step_group(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        beta1, beta2 = group["betas"]
        decay = decay_factors(group)
        hyper = dict(lr=group_lr(group), beta1=beta1, beta2=beta2, eps=group["eps"],
                     delta=group["delta"], wd_ratio=group["wd_ratio"],
                     nesterov=group["nesterov"], decay_rate=decay.rate, l2=decay.l2)
        plan = choose(group, [params], _on_cpu, _why_not_cpu)
        for impl, idx in plan:
            ps = pick(params, idx)
            # Contiguous: the projection views the update (built from these) as rows.
            columns = self._adam_states(ps, memory_format=torch.contiguous_format)
            if impl == "foreach":
                adamp_foreach(ps, pick(grads, idx), *columns, **hyper)
            elif impl == "compiled":
                adamp_compiled(ps, pick(grads, idx), *columns, **hyper)
            else:
                adamp_step(ps, pick(grads, idx), *columns, fused=impl == "native", **hyper)


class SGDP(WdOptimizer):
    """SGD with momentum, decoupled decay and projection on scale-invariant weights.

    buf <- momentum*buf + (1 - dampening)*g (from zeros, as clovaai; torch's SGD instead starts
    buf at g); direction buf, or g + momentum*buf with Nesterov; without Nesterov the projection
    is applied to the buffer in place (clovaai's behaviour). Decay w <- w*(1 - c*r/(1 - momentum)),
    see the module docstring. `lr` has no default: pass it. State: "momentum_buffer" (only when
    momentum > 0).
    """

    IMPLS = ("reference", "native", "foreach", "compiled")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | None = None,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        decay: str = "decoupled",
        eps: float = 1e-8,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        *,
        decay_to: str = "zero",
        decay_ema: float = 0.999,
        impl: str = "auto",
    ) -> None:
        if lr is None:
            raise ValueError("lr is required for SGDP (no default); pass e.g. lr=0.1")
        defaults = dict(
            impl=impl_from(impl, owner="SGDP"),
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            weight_decay=weight_decay,
            decay=decay,
            decay_to=decay_to,
            decay_ema=decay_ema,
            eps=eps,
            delta=delta,
            wd_ratio=wd_ratio,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_momentum(group)
        _check_projection(group)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "nesterov=True requires momentum > 0 and dampening = 0; "
                f"got momentum={group['momentum']!r}, dampening={group['dampening']!r}"
            )

    def _step_group(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        momentum = group["momentum"]
        bufs = [self._buffer(p) if momentum != 0 else None for p in params]
        decay = decay_factors(group)
        hyper = dict(lr=group_lr(group), momentum=momentum, dampening=group["dampening"],
                     nesterov=group["nesterov"], eps=group["eps"], delta=group["delta"],
                     wd_ratio=group["wd_ratio"], decay_rate=decay.rate, l2=decay.l2)
        plan = choose(group, [params], _on_cpu, _why_not_cpu)
        for impl, idx in plan:
            cols = (pick(params, idx), pick(grads, idx), pick(bufs, idx))
            if impl == "foreach":
                sgdp_foreach(*cols, **hyper)
            elif impl == "compiled":
                sgdp_compiled(*cols, **hyper)
            else:
                sgdp_step(*cols, fused=impl == "native", **hyper)
