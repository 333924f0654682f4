"""NovoGrad's update (one second moment per layer): the reference path (the layer norm read on the
host, then the elementwise pass per block; torch's fused SGD kernel does the momentum), the
native path (kernels.c's SGD kernel) and the foreach path (norms stay 0-d device tensors).
"""

from __future__ import annotations

import torch

from wdlab import _compat
from wdlab.optim import _native as native
from wdlab.optim._dispatch import by_device_and_dtype
from wdlab.optim.distributed import scalar
from wdlab.optim.functional._common import (
    Tensors,
    foreach_elementwise,
    resolve_mode,
    sgd_fusable,
    step_values,
    with_l2,
)


def _novograd_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    *,
    lr: float,
    keep: float,
    beta1: float,
    gain: float,
    decay_gain: float,
    decay_in_momentum: bool,
    decays: bool,
) -> None:
    # The decay pass, then torch's fused SGD kernel on the block while it is in cache: with
    # dampening 1 - gain its buffer rule m <- b1*m + (1 - dampening)*(g + wd*w) is NovoGrad's.
    if decays:
        param.mul_(keep)
    if beta1 > 0 and sgd_fusable(param, grad, exp_avg):
        _compat.fused_sgd()(
            [param],
            [grad],
            [exp_avg],
            weight_decay=decay_gain / gain if decay_in_momentum else 0.0,
            momentum=beta1,
            lr=lr,
            dampening=1.0 - gain,
            nesterov=False,
            maximize=False,
            is_first_step=False,
        )
        return
    exp_avg.mul_(beta1).add_(grad, alpha=gain)
    if decay_in_momentum:
        exp_avg.add_(param, alpha=decay_gain)
    param.add_(exp_avg, alpha=-lr)


def _novograd_compiled(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    lr: torch.Tensor,
    beta1: torch.Tensor,
    beta2: torch.Tensor,
    eps: torch.Tensor,
    avg: torch.Tensor,
    decay_gain: torch.Tensor,
    keep: torch.Tensor,
    first: bool,
) -> None:
    # The whole per-layer step in one graph, the layer norm included: nothing is read on the
    # host (the reference path reads ||g|| and v as Python floats).
    norm_sq = (grad * grad).sum()
    v = norm_sq if first else exp_avg_sq * beta2 + norm_sq * (1 - beta2)
    exp_avg_sq.copy_(v)
    m = exp_avg * beta1 + grad * (avg / (v.sqrt() + eps)) + param * decay_gain
    exp_avg.copy_(m)
    param.copy_(param * keep - lr * m)


def novograd_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    state_steps: list[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    grad_averaging: bool,
    decay_rate: float,
    l2: float,
    decay_in_momentum: bool,
    mode: str = "auto",
) -> None:
    """One NovoGrad step per tensor ("layer"); increments state_steps.

    v <- ||g||^2 on the first step, else b2*v + (1 - b2)*||g||^2 (a 0-d tensor per layer);
    d = g/(sqrt(v) + eps); m <- d on the first step (m is still 0 there: b1*0 + d), else
    b1*m + a*d with a = 1 - b1 if grad_averaging else 1; w <- w*(1 - decay_rate) - lr*m.
    decay_in_momentum=True is the paper's form instead: d gains (decay_rate/lr)*w and w is not
    shrunk separately. g includes l2*w. mode as in foreach_elementwise ("compiled": the
    whole per-layer step torch.compile'd, the layer norm computed in the graph).
    """
    for param, grad, exp_avg, exp_avg_sq, step_t in zip(
        params, grads, exp_avgs, exp_avg_sqs, state_steps, strict=True
    ):
        if l2:
            grad = grad.add(param, alpha=l2)
        step_t += 1
        first = float(step_t) == 1.0
        avg = 1.0 if first or not grad_averaging else 1 - beta1
        in_m = decay_in_momentum and decay_rate > 0 and lr > 0
        decay_gain = avg * decay_rate / lr if in_m else 0.0
        decays = not decay_in_momentum and decay_rate > 0
        if mode == "compiled":
            compiled = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "avg": avg,
                        "decay_gain": decay_gain, "keep": 1.0 - decay_rate if decays else 1.0,
                        "first": first}
            foreach_elementwise(_novograd_compiled, [[param], [grad], [exp_avg], [exp_avg_sq]],
                                compiled, mode="compiled")
            continue
        on_c = resolve_mode(mode, [param, grad, exp_avg]) == "native"
        norm_sq = native.sum_of_squares(grad) if on_c else scalar(torch.linalg.vector_norm(grad))**2
        exp_avg_sq.fill_(norm_sq if first else beta2 * float(exp_avg_sq) + (1 - beta2) * norm_sq)
        scale = 1.0 / (float(exp_avg_sq) ** 0.5 + eps)
        gain = avg * scale
        if on_c:
            # m <- b1*m + gain*(g + (decay_gain/gain)*w); w <- keep*w - lr*m: the SGD kernel
            # with dampening 1 - gain, as the chunked path uses torch's fused SGD.
            native.run_multi("sgdw", [[param], [grad], [exp_avg]], lr, beta1, 1.0 - gain, False,
                             1.0 - decay_rate if decays else 1.0, decay_gain / gain, False)
            continue
        scalars = {
            "lr": lr,
            "keep": 1.0 - decay_rate,
            "beta1": beta1,
            "gain": gain,
            "decay_gain": decay_gain,
            "decay_in_momentum": in_m,
            "decays": decays,
        }
        foreach_elementwise(_novograd_reference, [[param], [grad], [exp_avg]], scalars, mode=mode)



# ---- NovoGrad, FAdam, SCALE ----------------------------------------------------------------


def novograd_foreach(
    params: Tensors,
    grads: Tensors,
    exp_avgs: Tensors,
    exp_avg_sqs: Tensors,
    steps: Tensors,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    grad_averaging: bool,
    decay_rate: float,
    l2: float,
    decay_in_momentum: bool,
) -> None:
    """NovoGrad (novograd_step's math); the layer norms stay 0-d device tensors."""
    for p, g, m, v, s in by_device_and_dtype(params, grads, exp_avgs, exp_avg_sqs, steps):
        first = [k == 1.0 for k in step_values(s)]  # CPU counters: no device read
        g = with_l2(g, p, l2)
        norm_sq = torch._foreach_norm(g)
        torch._foreach_mul_(norm_sq, norm_sq)
        # v <- ||g||^2 on the first step (lerp weight 1 is exact), else b2*v + (1 - b2)*||g||^2
        torch._foreach_lerp_(v, norm_sq, [1.0 if f else 1 - beta2 for f in first])
        gain = torch._foreach_sqrt(v)
        torch._foreach_add_(gain, eps)
        torch._foreach_reciprocal_(gain)
        avg = [1.0 if f or not grad_averaging else 1 - beta1 for f in first]
        torch._foreach_mul_(gain, avg)
        torch._foreach_mul_(m, beta1)
        torch._foreach_addcmul_(m, g, gain)
        if decay_in_momentum and decay_rate > 0 and lr > 0:
            torch._foreach_add_(m, torch._foreach_mul(p, [a * decay_rate / lr for a in avg]))
        elif decay_rate > 0:
            torch._foreach_mul_(p, 1 - decay_rate)
        torch._foreach_add_(p, m, alpha=-lr)


