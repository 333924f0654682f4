"""Lion's update: the reference path (torch ops per block), the native path (kernels.c), the
compiled path (torch.compile) and the foreach path (torch._foreach_*, no host sync).
"""

from __future__ import annotations

import torch

from wdlab.optim._dispatch import by_device_and_dtype
from wdlab.optim.functional._common import (
    Tensors,
    foreach_elementwise,
    native_multi_or_mode,
    with_l2,
)


def _lion_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    keep: float,
    l2: float,
) -> None:
    if l2:
        grad = grad.add(param, alpha=l2)
    direction = torch.lerp(exp_avg, grad, 1 - beta1).sign_()
    if keep != 1.0:
        param.mul_(keep)
    param.add_(direction, alpha=-lr)
    exp_avg.lerp_(grad, 1 - beta2)


def _lion_compiled(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    *,
    lr: torch.Tensor,
    beta1: torch.Tensor,
    beta2: torch.Tensor,
    keep: torch.Tensor,
    l2: torch.Tensor,
) -> None:
    grad = grad + l2 * param
    direction = torch.sign(exp_avg * beta1 + grad * (1 - beta1))
    param.copy_(param * keep - lr * direction)
    exp_avg.copy_(exp_avg * beta2 + grad * (1 - beta2))


def lion_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    decay_rate: float,
    l2: float,
    mode: str = "auto",
) -> None:
    """Lion: c = lerp(m, g, 1-b1); w <- w*(1-decay_rate) - lr*sign(c); m <- lerp(m, g, 1-b2).

    lerp(m, g, t) = m + t*(g - m) is b*m + (1-b)*g in one op; g includes l2*w in l2 mode.
    """
    torch_mode = native_multi_or_mode(
        mode, "lion", [params, grads, exp_avgs], lr, beta1, beta2, 1.0 - decay_rate, l2
    )
    if torch_mode is None:
        return
    mode = torch_mode
    kernel = _lion_compiled if mode == "compiled" else _lion_reference
    scalars = {"lr": lr, "beta1": beta1, "beta2": beta2, "keep": 1.0 - decay_rate, "l2": l2}
    foreach_elementwise(kernel, [params, grads, exp_avgs], scalars, mode=mode)


def lion_foreach(
    params: Tensors,
    grads: Tensors,
    exp_avgs: Tensors,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    decay_rate: float,
    l2: float,
) -> None:
    """Lion: w <- w*(1 - decay_rate) - lr*sign(lerp(m, g, 1-b1)); m <- lerp(m, g, 1-b2)."""
    for p, g, m in by_device_and_dtype(params, grads, exp_avgs):
        g = with_l2(g, p, l2)
        direction = torch._foreach_lerp(m, g, 1 - beta1)
        torch._foreach_sign_(direction)
        if decay_rate:
            torch._foreach_mul_(p, 1 - decay_rate)
        torch._foreach_add_(p, direction, alpha=-lr)
        torch._foreach_lerp_(m, g, 1 - beta2)


