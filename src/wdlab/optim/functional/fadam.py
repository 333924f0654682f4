"""FAdam's update (Hwang 2024): the reference path (RMS and the two clips read on the host, then
the Fisher and update passes per block), the native path (kernels.c's two passes) and the
foreach path (RMS values and clips stay on the device).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wdlab.optim import _native as native
from wdlab.optim._dispatch import by_device_and_dtype
from wdlab.optim.distributed import scalar
from wdlab.optim.functional._common import (
    Tensors,
    adam_denominators,
    foreach_elementwise,
    resolve_mode,
    step_values,
    with_l2,
)


def _fisher_denom(fim: torch.Tensor, eps: float, power: float, sqrt: bool) -> torch.Tensor:
    return (fim.sqrt() if sqrt else fim.pow(power)).add_(eps)


def _fadam_fisher_reference(
    grad: torch.Tensor,
    fim: torch.Tensor,
    param: torch.Tensor,
    sum_g: torch.Tensor,
    sum_w: torch.Tensor,
    *,
    beta2: float,
    eps: float,
    power: float,
    sqrt: bool,
    with_decay: bool,
) -> None:
    # f <- b2*f + (1 - b2)*g^2; accumulate sum((g/den)^2) and sum((w/den)^2) for the RMS clips.
    fim.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = _fisher_denom(fim, eps, power, sqrt)
    ratio = torch.div(grad, denom)
    sum_g.add_(torch.linalg.vector_norm(ratio).square())
    if with_decay:
        sum_w.add_(torch.linalg.vector_norm(torch.div(param, denom, out=ratio)).square())


def _fadam_update_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    fim: torch.Tensor,
    exp_avg: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    eps: float,
    power: float,
    sqrt: bool,
    gain: float,
    decay_coef: float,
    with_decay: bool,
) -> None:
    denom = _fisher_denom(fim, eps, power, sqrt)
    exp_avg.mul_(beta1).addcdiv_(grad, denom, value=gain)
    if with_decay:
        param.addcdiv_(param, denom, value=-decay_coef)
    param.add_(exp_avg, alpha=-lr)


def _fadam_compiled(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    fim: torch.Tensor,
    *,
    lr: torch.Tensor,
    beta1: torch.Tensor,
    beta2: torch.Tensor,
    eps: torch.Tensor,
    clip: torch.Tensor,
    power: torch.Tensor,
    decay_rate: torch.Tensor,
    inv_numel: torch.Tensor,
    sqrt: bool,
    with_decay: bool,
) -> None:
    # The whole per-tensor step in one graph, its RMS values and clips included: nothing is
    # read on the host (the reference path reads them as Python floats). beta2 is b2_t.
    rms_g = ((grad * grad).sum() * inv_numel).sqrt()
    eps_t = torch.where(rms_g > 0, eps * rms_g.clamp(max=1.0), eps)
    f = fim * beta2 + grad * grad * (1 - beta2)
    fim.copy_(f)
    denom = (f.sqrt() if sqrt else f.pow(power)) + eps_t
    natural = grad / denom
    div_g = (((natural * natural).sum() * inv_numel).sqrt() / clip).clamp(min=1.0)
    m = exp_avg * beta1 + natural * ((1 - beta1) / div_g)
    exp_avg.copy_(m)
    if with_decay:
        w_nat = param / denom
        div_w = (((w_nat * w_nat).sum() * inv_numel).sqrt() / clip).clamp(min=1.0)
        param.copy_(param - w_nat * (decay_rate / div_w) - lr * m)
    else:
        param.copy_(param - lr * m)


def fadam_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    fims: list[torch.Tensor],
    state_steps: list[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    clip: float,
    power: float,
    decay_rate: float,
    l2: float,
    mode: str = "auto",
) -> None:
    """One FAdam step per tensor (Hwang 2024, Algorithm 1); increments state_steps.

    b2_t = b2*(1 - b2^(t-1))/(1 - b2^t) (so f is exactly Adam's bias-corrected v);
    f <- b2_t*f + (1 - b2_t)*g^2; eps_t = eps*min(1, RMS(g)); den = f^power + eps_t;
    g_nat = (g/den)/max(1, RMS(g/den)/clip); m <- b1*m + (1 - b1)*g_nat (no bias correction);
    w_nat = (w/den)/max(1, RMS(w/den)/clip); w <- w - decay_rate*w_nat - lr*m.
    Three reads of g (RMS, Fisher pass, update pass): the clips need whole-tensor RMS values.
    mode as in foreach_elementwise ("compiled": the whole per-tensor step torch.compile'd).
    """
    sqrt = power == 0.5
    for param, grad, exp_avg, fim, step_t in zip(
        params, grads, exp_avgs, fims, state_steps, strict=True
    ):
        if l2:
            grad = grad.add(param, alpha=l2)
        step_t += 1
        t = float(step_t)
        numel = max(grad.numel(), 1)
        beta2_t = beta2 * (1 - beta2 ** (t - 1)) / (1 - beta2**t)
        if mode == "compiled":
            compiled = {"lr": lr, "beta1": beta1, "beta2": beta2_t, "eps": eps, "clip": clip,
                        "power": power, "decay_rate": decay_rate, "inv_numel": 1.0 / numel,
                        "sqrt": sqrt, "with_decay": decay_rate > 0}
            foreach_elementwise(_fadam_compiled, [[param], [grad], [exp_avg], [fim]], compiled,
                                mode="compiled")
            continue
        on_c = resolve_mode(mode, [param, grad, exp_avg, fim]) == "native"
        if on_c:
            native.same_size(param, grad, exp_avg, fim)
        norm_sq = native.sum_of_squares(grad) if on_c else scalar(torch.linalg.vector_norm(grad))**2
        rms_g = (norm_sq / numel) ** 0.5
        eps_t = eps * min(1.0, rms_g) if rms_g > 0 else eps
        with_decay = decay_rate > 0
        common = {"eps": eps_t, "power": power, "sqrt": sqrt, "with_decay": with_decay}
        if on_c:
            sum_g, sum_w = _fadam_fisher_native(grad, fim, param, beta2_t, eps_t, power, sqrt,
                                                with_decay)
        else:
            # new_zeros: a replicated DTensor for a DTensor param, so a shard's sum adds in
            # all-reduced (plain tensors cannot take a DTensor's sum).
            sums = [param.new_zeros((), dtype=torch.float64) for _ in range(2)]
            foreach_elementwise(
                _fadam_fisher_reference, [[grad], [fim], [param], [sums[0]], [sums[1]]],
                {"beta2": beta2_t, **common}, mode=mode,
            )
            sum_g, sum_w = scalar(sums[0]), scalar(sums[1])
        div_g = max(1.0, (sum_g / numel) ** 0.5 / clip)
        div_w = max(1.0, (sum_w / numel) ** 0.5 / clip)
        gain, decay_coef = (1 - beta1) / div_g, decay_rate / div_w
        if on_c:
            native.run("fadam_update", param.dtype, param, grad, fim, exp_avg, param.numel(),
                       native.threads_for(param.numel()), lr, beta1, eps_t, power, sqrt, gain,
                       decay_coef)
            native.touched([param])
            continue
        scalars = {"lr": lr, "beta1": beta1, "gain": gain, "decay_coef": decay_coef, **common}
        foreach_elementwise(
            _fadam_update_reference, [[param], [grad], [fim], [exp_avg]], scalars, mode=mode
        )


def _fadam_fisher_native(
    grad: torch.Tensor,
    fim: torch.Tensor,
    param: torch.Tensor,
    beta2: float,
    eps: float,
    power: float,
    sqrt: bool,
    with_decay: bool,
) -> tuple[float, float]:
    """FAdam's Fisher pass in kernels.c: (sum((g/den)^2), sum((w/den)^2)), one part per thread."""
    threads = native.threads_for(grad.numel())
    parts = torch.zeros(threads, 2, dtype=torch.float64)  # one slot per thread
    native.run("fadam_fisher", grad.dtype, grad, fim, param, grad.numel(), threads, beta2, eps,
               power, sqrt, with_decay, parts)
    sum_g, sum_w = parts.sum(dim=0).tolist()
    return sum_g, sum_w



def fadam_foreach(
    params: Tensors,
    grads: Tensors,
    exp_avgs: Tensors,
    fims: Tensors,
    steps: Tensors,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    clip: float,
    power: float,
    decay_rate: float,
    l2: float,
) -> None:
    """FAdam (fadam_step's math); RMS values and clips stay on the device."""
    for p, g, m, f, s in by_device_and_dtype(params, grads, exp_avgs, fims, steps):
        t = step_values(s)
        g = with_l2(g, p, l2)
        root_n = [max(x.numel(), 1) ** 0.5 for x in g]
        rms = torch.stack(torch._foreach_div(torch._foreach_norm(g), root_n))
        # eps_t = eps*min(1, RMS(g)), or eps where g is all zero
        eps_t = torch.where(rms > 0, rms.clamp(max=1.0) * eps, torch.full_like(rms, eps))
        b2 = [beta2 * (1 - beta2 ** (k - 1)) / (1 - beta2**k) for k in t]
        denom = adam_denominators(f, g, b2, list(eps_t.unbind(0)), power=power)
        natural = torch._foreach_div(g, denom)
        gain = _clip_divisor(natural, root_n, clip)  # max(1, RMS(g/den)/clip)
        torch._foreach_reciprocal_(gain)
        torch._foreach_mul_(gain, 1 - beta1)
        torch._foreach_mul_(m, beta1)
        torch._foreach_addcmul_(m, natural, gain)
        if decay_rate > 0:
            w_nat = torch._foreach_div(p, denom)
            coef = _clip_divisor(w_nat, root_n, clip)
            torch._foreach_reciprocal_(coef)
            torch._foreach_mul_(coef, -decay_rate)
            torch._foreach_addcmul_(p, w_nat, coef)
        torch._foreach_add_(p, m, alpha=-lr)


def _clip_divisor(tensors: Sequence[torch.Tensor], root_n: list[float], clip: float) -> Tensors:
    """max(1, RMS(x)/clip) per tensor, as 0-d device tensors."""
    out = list(torch._foreach_div(torch._foreach_norm(tensors), [r * clip for r in root_n]))
    torch._foreach_clamp_min_(out, 1.0)
    return out


