"""SCALE's normalized update (per-row or per-column RMS): the reference path (torch ops per block),
the native path (kernels.c) and the foreach path (norms stacked per shape, no host sync).
"""

from __future__ import annotations

import math

import torch

from wdlab.optim import _native as native
from wdlab.optim._dispatch import by_device_and_dtype
from wdlab.optim.functional._common import (
    Tensors,
    as_matrix,
    foreach_elementwise,
    resolve_mode,
    with_l2,
)


def _scale_reference(
    param: torch.Tensor, grad: torch.Tensor, step: torch.Tensor, *, keep: float, decays: bool
) -> None:
    # step = lr/RMS per row (rows, 1) or per column (1, cols): w <- keep*w - step*g.
    if decays:
        param.mul_(keep)
    param.addcmul_(grad, step, value=-1)


def scale_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_bufs: list[torch.Tensor | None],
    norm_dims: list[int],
    *,
    lr: float,
    momentum: float,
    eps: float,
    decay_rate: float,
    l2: float,
    mode: str = "auto",
) -> None:
    """One SCALE step on matrix-like params (viewed as (size(0), -1)).

    buf <- lerp(buf, g, 1 - momentum) where a buffer exists (the output layer), then that
    direction D is divided by its RMS along `norm_dims[i]` (1: per row over the inputs of a
    torch (out, in) weight, 0: per column, for an (num, dim) embedding), clamped at eps, and
    w <- w*(1 - decay_rate) - lr*D/RMS. g includes l2*w.
    """
    for param, grad, buf, dim in zip(params, grads, momentum_bufs, norm_dims, strict=True):
        if l2:
            grad = grad.add(param, alpha=l2)
        if buf is not None:
            grad = buf.lerp_(grad, 1 - momentum)
        rows = param.reshape(param.size(0), -1)
        direction = grad.reshape(rows.shape)
        # lr/RMS = lr*sqrt(n)/||.||, with RMS clamped at eps as the authors' code does.
        root_n = direction.size(dim) ** 0.5
        norms = torch.linalg.vector_norm(direction, dim=dim, keepdim=True)
        # Out of place: a DTensor's column norms are Partial until read, so not clampable in place.
        step = torch.div(lr * root_n, norms.clamp(min=eps * root_n))
        scalars = {"keep": 1.0 - decay_rate, "decays": decay_rate > 0}
        if resolve_mode(mode, [param, direction, step]) == "native":
            native.run("scaled_step", param.dtype, param, direction, step, direction.size(0),
                       direction.size(1), dim == 1, native.threads_for(param.numel()),
                       1.0 - decay_rate)
            native.touched([param])
        elif param.is_contiguous():  # rows is a view: update it block by block
            foreach_elementwise(_scale_reference, [[rows], [direction], [step]], scalars, mode=mode)
        else:  # reshape copied: update the tensor itself
            param.mul_(1.0 - decay_rate).sub_((direction * step).reshape(param.shape))

def scale_foreach(
    params: Tensors,
    grads: Tensors,
    bufs: list[torch.Tensor | None],
    norm_dims: list[int],
    *,
    lr: float,
    momentum: float,
    eps: float,
    decay_rate: float,
    l2: float,
) -> None:
    """SCALE's normalized update (scale_step's math), row norms stacked per shape."""
    for p, g, b, d in by_device_and_dtype(params, grads, bufs, norm_dims):
        g = with_l2(g, p, l2)
        held = [i for i, x in enumerate(b) if x is not None]
        if held:
            kept = [b[i] for i in held]
            torch._foreach_lerp_(kept, [g[i] for i in held], 1 - momentum)
            g = list(g)
            for i, x in zip(held, kept, strict=True):
                g[i] = x
        buckets: dict[tuple[int, int, int], list[int]] = {}
        for i, x in enumerate(p):
            buckets.setdefault((x.size(0), math.prod(x.shape[1:]), d[i]), []).append(i)
        factors: Tensors = []
        order: list[int] = []
        for (rows, cols, dim), idx in buckets.items():
            direction = torch.stack([as_matrix(g[i]) for i in idx])
            root_n = (cols if dim == 1 else rows) ** 0.5
            norms = torch.linalg.vector_norm(direction, dim=1 + dim, keepdim=True)
            step = (lr * root_n) / norms.clamp_(min=eps * root_n)
            factors.extend(step.unbind(0))
            order.extend(idx)
        if decay_rate:
            torch._foreach_mul_(p, 1 - decay_rate)
        if all(p[i].is_contiguous() for i in order):  # the 2-D views write into p
            views = [as_matrix(p[i]) for i in order]
            torch._foreach_addcmul_(views, [as_matrix(g[i]) for i in order], factors, value=-1)
            continue
        for i, factor in zip(order, factors, strict=True):
            p[i].sub_((as_matrix(g[i]) * factor).reshape(p[i].shape))


