"""AdamP and SGDP (clovaai/AdamP): the scale-invariance test and the projection of the radial part
out of updates, the reference path (per tensor; the cosine test in kernels.c where it can run),
the fused path (torch's fused Adam/SGD kernels for the Adam/SGD arithmetic) and the foreach
path (the test and projection as torch.where-style masks over stacked same-shape matrices).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from wdlab import _compat
from wdlab.optim import _native as native
from wdlab.optim._dispatch import by_device_and_dtype
from wdlab.optim.distributed import is_dtensor, scalar
from wdlab.optim.functional._common import (
    Tensors,
    adam_denominators,
    as_matrix,
    by_dtype,
    by_shape,
    compiled_once,
    fusable,
    scalar_tensors,
    sgd_fusable,
    step_values,
)
from wdlab.optim.functional.adamw import adamw_step

# -- AdamP / SGDP: project the radial part out of updates of scale-invariant weights --

VIEWS = ("channel", "layer")


def _row_cosines(
    g: torch.Tensor, w: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: |cos(g, w)| (max(norm, eps) per factor, as F.cosine_similarity) and ||w||."""
    dots = (g * w).sum(dim=1)
    w_norms = torch.linalg.vector_norm(w, dim=1)
    g_norms = torch.linalg.vector_norm(g, dim=1)
    return dots.abs() / (g_norms.clamp(min=eps) * w_norms.clamp(min=eps)), w_norms


def _invariant_view_native(
    w: torch.Tensor, g: torch.Tensor, delta: float, eps: float
) -> tuple[str | None, torch.Tensor | None]:
    """scale_invariant_view in one read of w and g: kernels.c sums per row in float64 and
    decides both views there, so a step pays no small torch ops per tensor."""
    rows, cols = w.shape
    threads = native.threads_for(w.numel())
    scratch = torch.empty(threads * rows * 3, dtype=torch.float64)
    norms = torch.empty(rows, dtype=torch.float64)
    view = native.run("invariant_view", w.dtype, w, g, rows, cols, threads, delta, eps,
                      scratch, norms)
    if view == 1:
        return "channel", norms.to(w.dtype)
    if view == 2:
        return "layer", norms[:1].to(w.dtype)
    return None, None


def scale_invariant_view(
    param: torch.Tensor, grad: torch.Tensor, delta: float, eps: float
) -> tuple[str | None, torch.Tensor | None]:
    """Which view ("channel", "layer" or None) treats `param` as scale-invariant, and its norms.

    A view passes when every row's |cos(grad_row, w_row)| < delta/sqrt(row_dim): the gradient of
    a scale-invariant weight is orthogonal to it (REFERENCE.md §2). "channel" rows are
    w.view(out, -1), "layer" is the whole tensor as one row. Returns the row norms of `param` in
    the winning view so the projection need not recompute them.

    Speed (the test reads p and g on every step): the channel view needs every row to pass, so
    the first row is tried alone and, if it fails, the other rows are never read; the layer
    view is one BLAS dot and two norms, with no temporary.
    """
    w = param.reshape(param.size(0), -1)
    g = grad.reshape(w.shape)
    limit = delta / w.size(1) ** 0.5
    if native.supports([param, grad]):
        return _invariant_view_native(w, g, delta, eps)
    sharded = is_dtensor(w)  # a DTensor: the first-row shortcut would gather its first shard
    if sharded or float(_row_cosines(g[:1], w[:1], eps)[0]) < limit:
        cos, w_norms = _row_cosines(g, w, eps)
        if scalar(cos.max()) < limit:  # a DTensor's max is all-reduced: one decision
            return "channel", w_norms
    w_norm = torch.linalg.vector_norm(w)
    g_norm = torch.linalg.vector_norm(g)
    # A DTensor sharded unevenly cannot be flattened: sum the product instead of a BLAS dot.
    dot = (g * w).sum() if sharded else torch.dot(g.reshape(-1), w.reshape(-1))
    cos_layer = dot.abs() / (g_norm.clamp(min=eps) * w_norm.clamp(min=eps))
    if scalar(cos_layer) < delta / w.numel() ** 0.5:
        return "layer", w_norm.reshape(1)
    return None, None


def adamp_project(
    param: torch.Tensor,
    update: torch.Tensor,
    view: str,
    eps: float,
    norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Remove from `update` (in place) its component along each row of `param`.

    Per row: w_hat = w/(||w|| + eps), update <- update - w_hat*<w_hat, update>, written as
    update - w*<w, update>/(||w|| + eps)^2 so w_hat is never materialized.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}; got {view!r}")
    if is_dtensor(param):
        # Never flattened (an unevenly sharded DTensor cannot be): per-row or whole sums.
        if norms is None:
            norms = _view_sums(param, param, view).sqrt()
        coef = _per_row(_view_sums(param, update, view) / (norms + eps).square(), param, view)
        return update.addcmul_(param, coef, value=-1)
    rows = param.size(0) if view == "channel" else 1
    w = param.reshape(rows, -1)
    u = update.reshape(rows, -1)
    if norms is None:
        norms = torch.linalg.vector_norm(w, dim=1)
    coef = ((w * u).sum(dim=1) / (norms + eps).square()).unsqueeze(1)
    if update.is_contiguous():
        u.addcmul_(w, coef, value=-1)  # u is a view of update
    else:
        update.sub_((w * coef).reshape(update.shape))
    return update


def _view_sums(a: torch.Tensor, b: torch.Tensor, view: str) -> torch.Tensor:
    """<a, b> per row of dim 0 ("channel", shape (rows,)) or over the tensor ("layer", (1,))."""
    if view == "channel":
        return (a * b).reshape(a.size(0), -1).sum(dim=1)
    return (a * b).sum().reshape(1)


def _per_row(values: torch.Tensor, like: torch.Tensor, view: str) -> torch.Tensor:
    """(rows,) or (1,) values shaped to broadcast over `like` row by row."""
    if view == "channel":
        return values.reshape(-1, *[1] * (like.ndim - 1))
    return values.reshape(())


def _projection_view(
    param: torch.Tensor, grad: torch.Tensor, delta: float, eps: float
) -> tuple[str | None, torch.Tensor | None]:
    if param.ndim < 2:
        return None, None
    return scale_invariant_view(param, grad, delta, eps)



def _step_projected(
    param: torch.Tensor,
    direction: torch.Tensor,
    view: str,
    norms: torch.Tensor,
    eps: float,
    keep: float,
    alpha: float,
) -> None:
    """param <- keep*param + alpha*(direction minus its radial part per row), in two passes.

    Same value as adamp_project then mul_ and add_, but never writes the projected direction.
    """
    rows = param.size(0) if view == "channel" else 1
    if is_dtensor(param):
        coef = _view_sums(param, direction, view) / (norms + eps).square()
        param.mul_(keep - alpha * _per_row(coef, param, view)).add_(direction, alpha=alpha)
        return
    if not (param.is_contiguous() and direction.is_contiguous()):
        adamp_project(param, direction, view, eps, norms)
        param.mul_(keep).add_(direction, alpha=alpha)
        return
    w = param.view(rows, -1)
    coef = (w * direction.view(rows, -1)).sum(dim=1) / (norms + eps).square()
    w.mul_((keep - alpha * coef).unsqueeze(1))
    param.add_(direction, alpha=alpha)


def adamp_step(
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
    delta: float,
    wd_ratio: float,
    nesterov: bool,
    decay_rate: float,
    l2: float,
    fused: bool = True,
) -> None:
    """One AdamP step (clovaai/AdamP order): moments, direction, projection, decay, update.

    The scale-invariance test reads the raw gradient; projection uses the weights before decay;
    a projected tensor's decay (decoupled rate or l2 coefficient) is multiplied by wd_ratio.

    Speed: without Nesterov the Adam arithmetic runs in torch's fused kernel (one pass over
    p, g, m, v): unprojected tensors are then exactly a fused AdamW/Adam step, and projected
    ones get their direction -m_hat/denom from the same kernel run on a zero workspace.
    `fused=False` (or Nesterov, or non-contiguous tensors) takes the plain per-op path.
    """
    plain: list[tuple[Any, ...]] = []
    free: list[list[torch.Tensor]] = [[], [], [], [], []]
    # The AdamW kernel decays by lr*weight_decay, so hand it the wanted rate divided by lr.
    wd = l2 if l2 else (decay_rate / lr if lr > 0 else 0.0)
    tested = _matrices_native(
        params, fused and not nesterov,
        lambda idx: native.run_adamp(
            *[[column[i] for i in idx] for column in (params, grads, exp_avgs, exp_avg_sqs,
                                                       state_steps)],
            lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=wd, decoupled=not l2,
            delta=delta, test_eps=eps))
    for i, row in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, state_steps, strict=True)):
        param, grad = row[0], row[1]
        if i in tested:  # tested by the kernel, and updated there unless projected
            view, norms = tested[i]
            if view is not None:
                row[4].add_(1)
                _adamp_projected_fused(*row, view, norms, lr=lr, beta1=beta1, beta2=beta2,
                                       eps=eps, keep=1 - decay_rate * wd_ratio, l2=l2 * wd_ratio)
            continue
        view, norms = _projection_view(param, grad, delta, eps)
        if not fused or nesterov or not fusable(*row[:4]):
            row[4].add_(1)
            plain.append((*row, view, norms))
        elif view is None:
            for column, tensor in zip(free, row, strict=True):
                column.append(tensor)
        else:
            row[4].add_(1)
            _adamp_projected_fused(*row, view, norms, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                   keep=1 - decay_rate * wd_ratio, l2=l2 * wd_ratio)
    if free[0]:
        # Unprojected tensors are plain AdamW/Adam: the shared fused step (it counts steps).
        adamw_step(*free, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=wd,
                   decoupled=not l2, fused=True)
    for param, grad, exp_avg, exp_avg_sq, step_t, view, norms in plain:
        step = float(step_t)
        ratio = wd_ratio if view is not None else 1.0
        if l2:
            grad = grad.add(param, alpha=l2 * ratio)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps)
        numer = grad.lerp(exp_avg, beta1) if nesterov else exp_avg
        step_size = lr / bias_correction1
        if view is None:
            if decay_rate:
                param.mul_(1 - decay_rate)
            param.addcdiv_(numer, denom, value=-step_size)
            continue
        update = torch.div(numer, denom, out=denom)
        adamp_project(param, update, view, eps, norms)
        if decay_rate:
            param.mul_(1 - decay_rate * ratio)
        param.add_(update, alpha=-step_size)


def _matrices_native(
    params: Sequence[torch.Tensor], allowed: bool,
    run: Callable[[list[int]], list[tuple[str | None, torch.Tensor | None]] | None],
) -> dict[int, tuple[str | None, torch.Tensor | None]]:
    """{index: (view, norms)} of the matrices (ndim >= 2, not empty) that `run` (native.run_adamp
    or run_sgdp on those indices) tested, and updated unless a view passed; {} where it could
    not run. Testing and updating one matrix after the other keeps its w and g in cache for
    the update: the second read of them costs no memory traffic (docs/performance.md)."""
    if not allowed:
        return {}
    idx = [i for i, p in enumerate(params) if p.ndim >= 2 and p.numel() > 0]
    found = run(idx) if idx else None
    return {} if found is None else dict(zip(idx, found, strict=True))


def _adamp_projected_fused(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step_t: torch.Tensor,
    view: str,
    norms: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    keep: float,
    l2: float,
) -> None:
    """AdamP step of one projected tensor with the moments advanced by torch's fused kernel.

    The kernel, run with lr 1 on a zero workspace, leaves there -(m/(1 - beta1^t))/denom; the
    step then is param <- keep*param + lr*(workspace minus its radial part).
    """
    if l2:
        grad = grad.add(param, alpha=l2)
    work = torch.zeros_like(param)
    _compat.fused_adam(False)([work], [grad], [exp_avg], [exp_avg_sq], [], [step_t], lr=1.0,
                       beta1=beta1, beta2=beta2, weight_decay=0.0, eps=eps, amsgrad=False,
                       maximize=False)
    _step_projected(param, work, view, norms, eps, keep, lr)


def sgdp_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_bufs: list[torch.Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    eps: float,
    delta: float,
    wd_ratio: float,
    decay_rate: float,
    l2: float,
    fused: bool = True,
) -> None:
    """One SGDP step (clovaai/AdamP order): momentum, direction, projection, decay, update.

    Decay is w <- w*(1 - decay_rate*ratio/(1 - momentum)), ratio = wd_ratio when projected
    else 1; the 1/(1 - momentum) makes it the steady-state decay of L2 under momentum. Without
    Nesterov the projection acts on the momentum buffer itself, as in clovaai's SGDP, so the
    buffer carries the projected direction. `momentum_bufs` holds None when momentum == 0.
    Unprojected tensors use torch's fused SGD kernel (the buffer starts from zeros, so
    is_first_step=False reproduces buf = momentum*buf + (1 - dampening)*g exactly).
    """
    free: list[tuple[torch.Tensor, ...]] = []
    # The unprojected tensors' one-pass update: w <- keep*w - lr*d, the buffer as torch's
    # fused SGD keeps it (without momentum torch ignores dampening; clovaai scales g by it).
    update = (lr if momentum else lr * (1 - dampening), momentum,
              dampening if momentum else 0.0, nesterov, 1 - decay_rate / (1 - momentum), l2)
    tested = _matrices_native(
        params, fused,
        lambda idx: native.run_sgdp([params[i] for i in idx], [grads[i] for i in idx],
                                    [momentum_bufs[i] for i in idx], *update, delta=delta,
                                    test_eps=eps))
    for i, (param, grad, buf) in enumerate(zip(params, grads, momentum_bufs, strict=True)):
        view, norms = tested[i] if i in tested else _projection_view(param, grad, delta, eps)
        if i in tested and view is None:
            continue  # tested and updated by the kernel
        tensors = (param, grad) if buf is None else (param, grad, buf)
        if view is None and fused and sgd_fusable(*tensors):
            free.append(tensors)
            continue
        ratio = wd_ratio if view is not None else 1.0
        if l2:
            grad = grad.add(param, alpha=l2 * ratio)
        if buf is not None:
            buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            direction = grad.add(buf, alpha=momentum) if nesterov else buf
        elif dampening or view is not None:
            direction = grad.mul(1 - dampening)  # a copy: the projection must not touch p.grad
        else:
            direction = grad
        if view is not None:
            adamp_project(param, direction, view, eps, norms)
        if decay_rate:
            param.mul_(1 - decay_rate * ratio / (1 - momentum))
        param.add_(direction, alpha=-lr)
    for group in by_dtype(free):
        p, g = group[0], group[1]
        bufs = group[2] if momentum else []
        if native.supports(p, g, bufs):
            native.run_multi("sgdw", [p, g, bufs or [None] * len(p)], *update, False)
            continue
        if decay_rate:
            torch._foreach_mul_(p, 1 - decay_rate / (1 - momentum))
        # Without momentum torch ignores dampening; clovaai scales g by (1 - dampening).
        step_lr = lr if momentum else lr * (1 - dampening)
        _compat.fused_sgd()(p, g, bufs, weight_decay=l2, momentum=momentum, lr=step_lr,
                          dampening=dampening, nesterov=nesterov, maximize=False,
                          is_first_step=False)



# ---- AdamP / SGDP: the scale-invariance test and projection as masks -----------------------


def _views(
    w: torch.Tensor, g: torch.Tensor, delta: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scale_invariant_view on a (k, rows, cols) stack, as 0/1 masks in w's dtype.

    Returns (channel (k, 1), layer (k, 1), ||w|| per row (k, rows), ||w|| (k, 1)); layer is 0
    wherever channel is 1, as the reference tries the channel view first.
    """
    rows, cols = w.shape[-2:]
    dots = (g * w).sum(dim=-1)
    w_norms = torch.linalg.vector_norm(w, dim=-1)
    g_norms = torch.linalg.vector_norm(g, dim=-1)
    cos = dots.abs() / (g_norms.clamp(min=eps) * w_norms.clamp(min=eps))
    channel = (cos.amax(dim=-1, keepdim=True) < delta / cols**0.5).to(w.dtype)
    w_norm = torch.linalg.vector_norm(w_norms, dim=-1, keepdim=True)
    g_norm = torch.linalg.vector_norm(g_norms, dim=-1, keepdim=True)
    cos_layer = dots.sum(dim=-1, keepdim=True).abs() / (
        g_norm.clamp(min=eps) * w_norm.clamp(min=eps)
    )
    layer = (cos_layer < delta / (rows * cols) ** 0.5).to(w.dtype) * (1 - channel)
    return channel, layer, w_norms, w_norm


class _Projection:
    """The scale-invariance decision of every matrix of one bucket, made before the step."""

    def __init__(self, params: Tensors, grads: Tensors, delta: float, eps: float) -> None:
        # Per shape: (indices, stacked weights, 1/(||w_row|| + eps)^2 where the channel view
        # holds else 0, the same for the layer view, projected (k, 1) as 0/1).
        self.groups: list[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor,
                                torch.Tensor]] = []
        for idx in by_shape(params):
            w = torch.stack([as_matrix(params[i]) for i in idx])
            g = torch.stack([as_matrix(grads[i]) for i in idx])
            channel, layer, w_norms, w_norm = _views(w, g, delta, eps)
            per_row = channel / (w_norms + eps).square()
            whole = layer / (w_norm + eps).square()
            self.groups.append((idx, w, per_row, whole, channel + layer))

    def factors(self, base: float, projected: float) -> list[tuple[list[int], Tensors]]:
        """Per group: (indices, 0-d factors: `projected` where projected, else `base`)."""
        return [(idx, list((proj.squeeze(-1) * (projected - base) + base).unbind(0)))
                for idx, _, _, _, proj in self.groups]

    def project(self, updates: Tensors) -> None:
        """Remove from each projected update (in place) its radial part per row, as
        adamp_project with the weights before decay."""
        for idx, w, per_row, whole, _ in self.groups:
            u = torch.stack([as_matrix(updates[i]) for i in idx])
            dots = (w * u).sum(dim=-1)
            coef = torch.addcmul(dots.sum(dim=-1, keepdim=True) * whole, dots, per_row)
            # Views write through: updates are fresh tensors or (SGDP) contiguous buffers.
            views = [as_matrix(updates[i]) for i in idx]
            torch._foreach_addcmul_(views, list(w.unbind(0)), list(coef.unsqueeze(-1).unbind(0)),
                                    value=-1)


def _decay_by_ratio(
    params: Tensors, projection: _Projection, rate: float, wd_ratio: float
) -> None:
    """w <- w*(1 - rate*r), r = wd_ratio for projected matrices, else 1."""
    if not rate:
        return
    matrices = {i for idx, *_ in projection.groups for i in idx}
    plain = [p for i, p in enumerate(params) if i not in matrices]
    if plain:
        torch._foreach_mul_(plain, 1 - rate)
    for idx, keep in projection.factors(1 - rate, 1 - rate * wd_ratio):
        torch._foreach_mul_([params[i] for i in idx], keep)


def _l2_by_ratio(
    grads: Tensors, params: Tensors, projection: _Projection, l2: float, wd_ratio: float
) -> Tensors:
    """g + l2*r*w with r as in _decay_by_ratio (new tensors; p.grad is not touched)."""
    if not l2:
        return grads
    out = list(torch._foreach_add(grads, params, alpha=l2))
    for idx, scaled in projection.factors(l2, l2 * wd_ratio):
        fresh = torch._foreach_addcmul([grads[i] for i in idx], [params[i] for i in idx], scaled)
        for i, t in zip(idx, fresh, strict=True):
            out[i] = t
    return out


def adamp_foreach(
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
    delta: float,
    wd_ratio: float,
    nesterov: bool,
    decay_rate: float,
    l2: float,
) -> None:
    """AdamP (adamp_step's math): test, moments, direction, projection, decay."""
    for p, g, m, v, s in by_device_and_dtype(params, grads, exp_avgs, exp_avg_sqs, steps):
        t = step_values(s)
        projection = _Projection(p, g, delta, eps)
        g = _l2_by_ratio(g, p, projection, l2, wd_ratio)
        torch._foreach_lerp_(m, g, 1 - beta1)
        denom = adam_denominators(v, g, beta2, eps, bias_correction2=[1 - beta2**k for k in t])
        numer = torch._foreach_lerp(g, m, beta1) if nesterov else m
        update = list(torch._foreach_div(numer, denom))
        projection.project(update)
        _decay_by_ratio(p, projection, decay_rate, wd_ratio)
        torch._foreach_mul_(update, [-lr / (1 - beta1**k) for k in t])
        torch._foreach_add_(p, update)


def sgdp_foreach(
    params: Tensors,
    grads: Tensors,
    bufs: list[torch.Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    eps: float,
    delta: float,
    wd_ratio: float,
    decay_rate: float,
    l2: float,
) -> None:
    """SGDP (sgdp_step's math); without Nesterov the buffer keeps the projection."""
    for p, g, b in by_device_and_dtype(params, grads, bufs):
        projection = _Projection(p, g, delta, eps)
        g = _l2_by_ratio(g, p, projection, l2, wd_ratio)
        if momentum:
            torch._foreach_mul_(b, momentum)
            torch._foreach_add_(b, g, alpha=1 - dampening)
            direction = list(torch._foreach_add(g, b, alpha=momentum)) if nesterov else b
        else:
            direction = list(torch._foreach_mul(g, 1 - dampening))
        projection.project(direction)  # in the buffer itself when direction is b
        _decay_by_ratio(p, projection, decay_rate / (1 - momentum), wd_ratio)
        torch._foreach_add_(p, direction, alpha=-lr)




# ---- AdamP / SGDP compiled: the test and projection per tensor, inside the graph -----------


def _projection_masks(
    w: torch.Tensor, g: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor, wd_ratio: Any
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """For one (rows, cols) matrix: (r = wd_ratio where projected else 1, 1/(||w_row||+eps)^2
    per row where the channel view holds else 0 (rows,), the same for the layer view (1,))."""
    channel, layer, w_norms, w_norm = _views(w[None], g[None], delta, eps)
    ratio = 1 + (channel + layer)[0] * (wd_ratio - 1)
    return ratio, channel[0] / (w_norms[0] + eps).square(), layer[0] / (w_norm[0] + eps).square()


def _without_radial(w: torch.Tensor, u: torch.Tensor, per_row: torch.Tensor,
                    whole: torch.Tensor) -> torch.Tensor:
    """u minus its component along each row of w (channel view) or along w (layer view)."""
    dots = (w * u).sum(dim=-1)
    return u - w * (dots.sum() * whole + dots * per_row)[:, None]


def _adamp_compiled(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    lr: torch.Tensor,
    beta1: torch.Tensor,
    beta2: torch.Tensor,
    eps: torch.Tensor,
    delta: torch.Tensor,
    wd_ratio: torch.Tensor,
    decay_rate: torch.Tensor,
    l2: torch.Tensor,
    step_size: torch.Tensor,
    bias_correction2_sqrt: torch.Tensor,
    nesterov: bool,
    matrix: bool,
) -> None:
    # adamp_step's math for one tensor with the view decision as masks (no host read): the
    # test on the raw gradient, then moments, direction, projection, decay, update.
    w = param.reshape(param.size(0), -1) if matrix else param
    g = grad.reshape(w.shape)
    if matrix:
        ratio, per_row, whole = _projection_masks(w, g, delta, eps, wd_ratio)
    else:
        ratio = 1.0
    g = g + (l2 * ratio) * w
    m = torch.lerp(exp_avg.reshape(w.shape), g, 1 - beta1)
    v = exp_avg_sq.reshape(w.shape) * beta2 + g * g * (1 - beta2)
    exp_avg.copy_(m.reshape(exp_avg.shape))
    exp_avg_sq.copy_(v.reshape(exp_avg_sq.shape))
    update = (torch.lerp(g, m, beta1) if nesterov else m) / (v.sqrt() / bias_correction2_sqrt
                                                             + eps)
    if matrix:
        update = _without_radial(w, update, per_row, whole)
    param.copy_((w * (1 - decay_rate * ratio) - step_size * update).reshape(param.shape))


def adamp_compiled(
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
    delta: float,
    wd_ratio: float,
    nesterov: bool,
    decay_rate: float,
    l2: float,
) -> None:
    """adamp_step's math torch.compile'd, one graph per tensor kind (matrix or not)."""
    fn = compiled_once(_adamp_compiled)
    for p, g, m, v, step_t in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
        step_t += 1
        t = float(step_t)
        scalars = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "delta": delta,
                   "wd_ratio": wd_ratio, "decay_rate": decay_rate, "l2": l2,
                   "step_size": lr / (1 - beta1**t), "bias_correction2_sqrt": (1 - beta2**t) ** 0.5}
        fn(p, g, m, v, **scalar_tensors({k: float(x) for k, x in scalars.items()}, p.dtype),
           nesterov=nesterov, matrix=p.ndim >= 2)


def _sgdp_compiled(
    param: torch.Tensor,
    grad: torch.Tensor,
    buf: torch.Tensor | None,
    *,
    lr: torch.Tensor,
    momentum: torch.Tensor,
    dampening: torch.Tensor,
    eps: torch.Tensor,
    delta: torch.Tensor,
    wd_ratio: torch.Tensor,
    decay_rate: torch.Tensor,
    l2: torch.Tensor,
    nesterov: bool,
    matrix: bool,
) -> None:
    # sgdp_step's math for one tensor, the view decision as masks; without Nesterov the buffer
    # keeps the projected direction, as clovaai's SGDP.
    w = param.reshape(param.size(0), -1) if matrix else param
    g = grad.reshape(w.shape)
    if matrix:
        ratio, per_row, whole = _projection_masks(w, g, delta, eps, wd_ratio)
    else:
        ratio = 1.0
    g = g + (l2 * ratio) * w
    if buf is not None:
        b = buf.reshape(w.shape) * momentum + g * (1 - dampening)
        direction = g + momentum * b if nesterov else b
    else:
        direction = g * (1 - dampening)
    if matrix:
        direction = _without_radial(w, direction, per_row, whole)
    if buf is not None:
        buf.copy_((b if nesterov else direction).reshape(buf.shape))
    keep = 1 - decay_rate * ratio / (1 - momentum)
    param.copy_((w * keep - lr * direction).reshape(param.shape))


def sgdp_compiled(
    params: Tensors,
    grads: Tensors,
    bufs: list[torch.Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    eps: float,
    delta: float,
    wd_ratio: float,
    decay_rate: float,
    l2: float,
) -> None:
    """sgdp_step's math torch.compile'd, one graph per tensor kind (matrix or not)."""
    fn = compiled_once(_sgdp_compiled)
    scalars = {"lr": lr, "momentum": momentum, "dampening": dampening, "eps": eps,
               "delta": delta, "wd_ratio": wd_ratio, "decay_rate": decay_rate, "l2": l2}
    for p, g, b in zip(params, grads, bufs, strict=True):
        fn(p, g, b, **scalar_tensors({k: float(x) for k, x in scalars.items()}, p.dtype),
           nesterov=nesterov, matrix=p.ndim >= 2)
