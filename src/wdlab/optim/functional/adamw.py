"""AdamW/Adam's update: the reference path (op for op torch's single-tensor AdamW, cut into
cache-sized blocks on CPU), the fused path (torch's _fused_adamw_/_fused_adam_, which is what
impl="native" means for Adam), and the foreach path (torch._foreach_*, no host sync).
"""

from __future__ import annotations

import torch

from wdlab import _compat
from wdlab.optim import _native as native
from wdlab.optim._dispatch import by_device_and_dtype
from wdlab.optim.functional._common import (
    Tensors,
    adam_denominators,
    foreach_elementwise,
    step_values,
    use_fused,
    with_l2,
)


def _adamw_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    step_size: float,
    bias_correction2_sqrt: float,
) -> None:
    # Op for op torch.optim.AdamW's single-tensor path, so the default path matches it exactly.
    if weight_decay:
        if decoupled:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


def _adamw_compiled(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    lr: torch.Tensor,
    beta1: torch.Tensor,
    beta2: torch.Tensor,
    eps: torch.Tensor,
    weight_decay: torch.Tensor,
    decoupled: bool,
    step_size: torch.Tensor,
    bias_correction2_sqrt: torch.Tensor,
) -> None:
    # _adamw_reference's math with tensor scalars (no alpha=/value=): inductor fuses one pass.
    if decoupled:
        kept = param * (1 - lr * weight_decay)
    else:
        kept = param
        grad = grad + weight_decay * param
    m = torch.lerp(exp_avg, grad, 1 - beta1)
    v = exp_avg_sq * beta2 + grad * grad * (1 - beta2)
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    param.copy_(kept - step_size * m / (v.sqrt() / bias_correction2_sqrt + eps))


def adamw_step(
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
    weight_decay: float,
    decoupled: bool,
    fused: bool | None = None,
    compiled: bool = False,
    own_kernel: bool = True,
) -> None:
    """One Adam step with torch's meaning of (weight_decay, decoupled); increments state_steps.

    decoupled=True: w <- w*(1 - lr*weight_decay) before the step (AdamW); False: grad +=
    weight_decay*w (Adam's L2). wdlab's "independent" mode is decoupled with weight_decay =
    wd/initial_lr, since lr*wd/initial_lr is exactly the schedule multiplier times wd.
    fused=None uses torch._fused_adamw_/_fused_adam_ where they run (CPU included): that is
    torch.optim.AdamW(fused=True) bit for bit; otherwise (fused=False) the chunked
    single-tensor path, equal to torch's default path bit for bit. compiled=True (with
    fused=False) runs the same math torch.compile'd, one graph for every tensor. On CPU the
    fused step runs as kernels.c's copy of torch's kernel (the same bits, one call for all
    tensors) where native.run_adam takes the tensors; own_kernel=False keeps torch's own.
    """
    if not params:
        return
    if not compiled and use_fused(params, fused):
        if own_kernel and native.run_adam(
            params, grads, exp_avgs, exp_avg_sqs, state_steps, lr=lr, beta1=beta1, beta2=beta2,
            eps=eps, weight_decay=weight_decay, decoupled=decoupled,
        ):
            return  # torch's fused kernel, bit for bit, in one call for the group
        steps = [
            s if s.device == p.device else s.to(p.device)
            for s, p in zip(state_steps, params, strict=True)
        ]
        torch._foreach_add_(steps, 1)
        kernel = _compat.fused_adam(decoupled)
        kernel(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            amsgrad=False,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay,
            eps=eps,
            maximize=False,
        )
        for s, moved in zip(state_steps, steps, strict=True):
            if s is not moved:
                s.copy_(moved)
        return
    kernel, mode = (_adamw_compiled, "compiled") if compiled else (_adamw_reference, "chunked")
    for param, grad, exp_avg, exp_avg_sq, step_t in zip(
        params, grads, exp_avgs, exp_avg_sqs, state_steps, strict=True
    ):
        step_t += 1
        step = float(step_t)
        scalars = {
            "lr": lr,
            "beta1": beta1,
            "beta2": beta2,
            "eps": eps,
            "weight_decay": weight_decay,
            "decoupled": decoupled,
            "step_size": lr / (1 - beta1**step),
            "bias_correction2_sqrt": (1 - beta2**step) ** 0.5,
        }
        foreach_elementwise(kernel, [[param], [grad], [exp_avg], [exp_avg_sq]], scalars, mode=mode)


# ---- AdamW (and the AdamW part of Muon and SCALE) -------------------------------------------


def adamw_foreach(
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
    weight_decay: float,
    decoupled: bool,
) -> None:
    """torch.optim.AdamW/Adam's foreach step (torch's meaning of weight_decay, decoupled)."""
    for p, g, m, v, s in by_device_and_dtype(params, grads, exp_avgs, exp_avg_sqs, steps):
        t = step_values(s)
        if weight_decay:
            if decoupled:
                torch._foreach_mul_(p, 1 - lr * weight_decay)
            else:
                g = with_l2(g, p, weight_decay)
        torch._foreach_lerp_(m, g, 1 - beta1)
        denom = adam_denominators(v, g, beta2, eps, bias_correction2=[1 - beta2**k for k in t])
        torch._foreach_addcdiv_(p, m, denom, [-lr / (1 - beta1**k) for k in t])


