"""Schedule-Free AdamW/SGD's step (wdlab.optim.schedule_free has the math in its docstring):
the reference path (op for op schedulefree's single-tensor path, cut into cache-sized blocks on
CPU), the native path (kernels.c, one pass) and the foreach path (torch._foreach_*, no host
sync).
"""

from __future__ import annotations

import torch

from wdlab.optim import _native as native
from wdlab.optim._dispatch import by_device_and_dtype
from wdlab.optim.functional._common import Tensors, adam_denominators, foreach_elementwise


def _schedule_free_reference(
    y: torch.Tensor,
    g: torch.Tensor,
    z: torch.Tensor,
    v: torch.Tensor | None,
    *,
    lr: float,
    beta2: float,
    bc2: float,
    eps: float,
    l2: float,
    wdl: float,
    ckp1: float,
    yc: float,
) -> None:
    # Op for op schedulefree's single-tensor path (without writing into the gradient).
    if l2:
        g = g.add(y, alpha=l2)
    if v is not None:
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        d = g.div(v.div(bc2).sqrt_().add_(eps))
    else:
        d = g.clone() if wdl else g
    if wdl:
        d.add_(y, alpha=wdl)
    y.lerp_(end=z, weight=ckp1)
    y.add_(d, alpha=lr * yc)
    z.sub_(d, alpha=lr)


def _schedule_free_compiled(
    y: torch.Tensor,
    g: torch.Tensor,
    z: torch.Tensor,
    v: torch.Tensor | None,
    *,
    lr: torch.Tensor,
    beta2: torch.Tensor,
    bc2: torch.Tensor,
    eps: torch.Tensor,
    l2: torch.Tensor,
    wdl: torch.Tensor,
    ckp1: torch.Tensor,
    step_y: torch.Tensor,
) -> None:
    # _schedule_free_reference's math with tensor scalars, for torch.compile (one pass).
    g = g + l2 * y
    if v is not None:
        v_new = v * beta2 + g * g * (1 - beta2)
        v.copy_(v_new)
        d = g / ((v_new / bc2).sqrt() + eps)
    else:
        d = g
    d = d + wdl * y
    y_new = torch.lerp(y, z, ckp1) + step_y * d  # from the z before this step
    z.copy_(z - lr * d)
    y.copy_(y_new)


def schedule_free_step(
    ys: Tensors,
    grads: Tensors,
    zs: Tensors,
    vs: list[torch.Tensor | None],
    *,
    lr: float,
    beta: float,
    beta2: float,
    bc2: float,
    eps: float,
    l2: float,
    wdl: float,
    ckp1: float,
    impl: str,
) -> None:
    """One Schedule-Free step over parallel lists (vs all None: the SGD form). impl is a
    concrete one: "reference" (torch ops, cut into cache-sized blocks on the CPU), "native"
    (kernels.c, one pass), "foreach" (torch._foreach_*, no host sync) or "compiled" (the
    update torch.compile'd, one graph for every tensor)."""
    yc = beta * (1 - ckp1) - 1
    if impl == "native":
        native.run_multi("schedule_free", [ys, grads, zs, vs], lr, beta2, bc2, eps, l2, wdl,
                         ckp1, lr * yc)
        native.touched(zs)
        return
    if impl == "foreach":
        schedule_free_foreach(ys, grads, zs, vs, lr=lr, beta2=beta2, bc2=bc2, eps=eps, l2=l2,
                              wdl=wdl, ckp1=ckp1, yc=yc)
        return
    if impl == "compiled":
        compiled = dict(lr=lr, beta2=beta2, bc2=bc2, eps=eps, l2=l2, wdl=wdl, ckp1=ckp1,
                        step_y=lr * yc)
        foreach_elementwise(_schedule_free_compiled, [ys, grads, zs, vs], compiled,
                            mode="compiled")
        return
    scalars = dict(lr=lr, beta2=beta2, bc2=bc2, eps=eps, l2=l2, wdl=wdl, ckp1=ckp1, yc=yc)
    foreach_elementwise(_schedule_free_reference, [ys, grads, zs, vs], scalars, mode="chunked")


def schedule_free_foreach(
    ys: Tensors, grads: Tensors, zs: Tensors, vs: list[torch.Tensor | None], *, lr: float,
    beta2: float, bc2: float, eps: float, l2: float, wdl: float, ckp1: float, yc: float,
) -> None:
    adam = vs[0] is not None
    columns = (ys, grads, zs, vs) if adam else (ys, grads, zs)
    for bucket in by_device_and_dtype(*columns):
        y, g, z = bucket[0], bucket[1], bucket[2]
        if l2:
            g = list(torch._foreach_add(g, y, alpha=l2))
        if adam:
            v = bucket[3]
            denom = adam_denominators(v, g, beta2, eps, bias_correction2=bc2,
                                      sqrt_of_corrected=True)
            d = list(torch._foreach_div(g, denom))
        else:
            d = list(torch._foreach_mul(g, 1.0)) if wdl and not l2 else g
        if wdl:
            torch._foreach_add_(d, y, alpha=wdl)
        torch._foreach_lerp_(y, z, weight=ckp1)
        torch._foreach_add_(y, d, alpha=lr * yc)
        torch._foreach_sub_(z, d, alpha=lr)
