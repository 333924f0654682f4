"""SGDW's update: the reference path (op for op torch.optim.SGD after the decay), the fused path
(decay pass + torch's fused SGD per block), the native path (kernels.c), the compiled path
(torch.compile) and the foreach path (torch._foreach_*, no host sync).
"""

from __future__ import annotations

import torch

from wdlab import _compat
from wdlab.optim._dispatch import by_device_and_dtype
from wdlab.optim.functional._common import (
    Tensors,
    foreach_elementwise,
    native_multi_or_mode,
    sgd_fusable,
    use_fused,
    with_l2,
)


def _sgdw_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    buf: torch.Tensor | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    keep: float,
    l2: float,
    fresh: bool,
) -> None:
    # Op for op torch.optim.SGD's single-tensor path after the decoupled decay.
    if l2:
        grad = grad.add(param, alpha=l2)
    if buf is not None:
        if fresh:
            buf.copy_(grad)  # torch starts the buffer at the gradient, without dampening
        else:
            buf.mul_(momentum).add_(grad, alpha=1 - dampening)
        grad = grad.add(buf, alpha=momentum) if nesterov else buf
    if keep != 1.0:
        param.mul_(keep)
    param.add_(grad, alpha=-lr)


def _sgdw_compiled(
    param: torch.Tensor,
    grad: torch.Tensor,
    buf: torch.Tensor | None,
    *,
    lr: torch.Tensor,
    momentum: torch.Tensor,
    dampening: torch.Tensor,
    nesterov: bool,
    keep: torch.Tensor,
    l2: torch.Tensor,
    fresh: bool,
) -> None:
    # Same math as _sgdw_reference with tensor scalars: inductor fuses it into one pass.
    grad = grad + l2 * param
    if buf is not None:
        new_buf = grad if fresh else buf * momentum + grad * (1 - dampening)
        buf.copy_(new_buf)
        grad = grad + momentum * new_buf if nesterov else new_buf
    param.copy_(param * keep - lr * grad)


def _sgdw_fused(
    param: torch.Tensor,
    grad: torch.Tensor,
    buf: torch.Tensor | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    keep: float,
    l2: float,
    fresh: bool,
) -> None:
    # The decay pass, then torch's fused SGD kernel (bit for bit its for-loop path) on the block
    # while it is still in cache: two passes per block instead of five.
    if keep != 1.0:
        param.mul_(keep)
    _compat.fused_sgd()(
        [param],
        [grad],
        [] if buf is None else [buf],
        weight_decay=l2,
        momentum=momentum,
        lr=lr,
        dampening=dampening,
        nesterov=nesterov,
        maximize=False,
        is_first_step=fresh,
    )


def sgdw_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_bufs: list[torch.Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    decay_rate: float,
    l2: float,
    fresh: bool = False,
    mode: str = "auto",
) -> None:
    """One SGD step: w <- w*(1 - decay_rate), then torch.optim.SGD's momentum rule on g + l2*w.

    `momentum_bufs` holds None when momentum == 0; fresh=True means the buffers were just
    created (torch copies the gradient into a new buffer instead of applying dampening).
    With decay_rate=0 and mode "chunked"/"whole" this is torch.optim.SGD's default path bit
    for bit; `mode` as in foreach_elementwise. With decay, "chunked" runs the decay pass and
    then torch's fused SGD kernel per block (where that kernel exists), two passes in cache.
    "native" (what "auto" picks on CPU) is one pass of kernels.c, equal to the formula to float
    rounding (not bit for bit torch's: it rounds a*b + c once where torch may round twice).
    """
    torch_mode = native_multi_or_mode(
        mode, "sgdw", [params, grads, momentum_bufs], lr, momentum, dampening, nesterov,
        1.0 - decay_rate, l2, fresh,
    )
    if torch_mode is None:
        return
    mode = torch_mode
    if mode == "compiled" and fresh:
        mode = "chunked"  # the one first step runs eager: one compiled graph fewer
    if mode == "compiled":
        kernel = _sgdw_compiled
    elif (mode == "chunked" and decay_rate and use_fused(params, None)
          and all(sgd_fusable(*ts) for ts in zip(params, grads, momentum_bufs, strict=True))):
        # Only with decoupled decay: torch's fused SGD rounds a few elements differently from
        # its for-loop path, and without decay SGDW must equal torch.optim.SGD's default path.
        kernel = _sgdw_fused
    else:
        kernel = _sgdw_reference
    scalars = {
        "lr": lr,
        "momentum": momentum,
        "dampening": dampening,
        "nesterov": nesterov,
        "keep": 1.0 - decay_rate,
        "l2": l2,
        "fresh": fresh,
    }
    foreach_elementwise(kernel, [params, grads, momentum_bufs], scalars, mode=mode)


# ---- SGDW, Lion ----------------------------------------------------------------------------


def sgdw_foreach(
    params: Tensors,
    grads: Tensors,
    bufs: list[torch.Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    decay_rate: float,
    l2: float,
    fresh: bool,
) -> None:
    """w <- w*(1 - decay_rate), then torch.optim.SGD's momentum rule on g + l2*w."""
    for p, g, b in by_device_and_dtype(params, grads, bufs):
        g = with_l2(g, p, l2)
        if momentum:
            if fresh:
                torch._foreach_copy_(b, g)
            else:
                torch._foreach_mul_(b, momentum)
                torch._foreach_add_(b, g, alpha=1 - dampening)
            g = list(torch._foreach_add(g, b, alpha=momentum)) if nesterov else b
        if decay_rate:
            torch._foreach_mul_(p, 1 - decay_rate)
        torch._foreach_add_(p, g, alpha=-lr)


