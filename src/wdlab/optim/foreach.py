"""The multi-tensor ("foreach") path of every wdlab optimizer: the impl every non-CPU device runs.

Same math as functional.py's reference functions (equal to float rounding; tests/
test_optim_dispatch.py checks each), written so that step() never waits for the device:
  - torch._foreach_* ops over each (device, dtype) bucket instead of one kernel per tensor;
  - the step counter lives on the CPU (torch's capturable=False layout) and is read there,
    once per bucket with one stack; per-tensor numbers derived from it (bias corrections,
    FAdam's beta2_t) enter as Python scalar lists, never as tensors built from Python lists
    (a host-to-device copy that waits);
  - statistics of a whole tensor or row (norms, AdamP/SGDP's cosine test, NovoGrad's layer
    norm, FAdam's RMS clips, SCALE's row norms) stay on the device as 0-d or stacked tensors,
    and decisions on them are torch.where masks; same-shape matrices are stacked so one op
    covers all of them (Muon's Newton-Schulz runs as batched matmuls).
Every function updates its tensors in place and returns None; scalars are Python numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from wdlab.optim._dispatch import by_device_and_dtype
from wdlab.optim.functional import (
    NsCoefficients,
    Split,
    muon_scale,
    newton_schulz,
    normuon_normalize,
    orthogonalize,
)

Tensors = list[torch.Tensor]


def step_values(steps: Sequence[torch.Tensor]) -> list[float]:
    """Increment the CPU step counters and read them, in one stack (no device involved)."""
    steps = list(steps)
    torch._foreach_add_(steps, 1)
    if len(steps) == 1:
        return [float(steps[0])]
    return torch.stack(steps).tolist()


def _l2(grads: Tensors, params: Tensors, l2: float) -> Tensors:
    return list(torch._foreach_add(grads, params, alpha=l2)) if l2 else grads


def _matrix(t: torch.Tensor) -> torch.Tensor:
    """t as (size(0), -1): the row layout of Muon, AdamP/SGDP and SCALE (a view if it can)."""
    return t if t.ndim == 2 else t.reshape(t.size(0), -1)


def _by_shape(tensors: Sequence[torch.Tensor]) -> list[list[int]]:
    """Indices of tensors with ndim >= 2, grouped by their (rows, cols) matrix shape."""
    out: dict[tuple[int, int], list[int]] = {}
    for i, t in enumerate(tensors):
        if t.ndim >= 2:
            out.setdefault((t.size(0), math.prod(t.shape[1:])), []).append(i)
    return list(out.values())


# ---- AdamW (and the AdamW part of Muon and SCALE) -------------------------------------------


def adamw(
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
                g = _l2(g, p, weight_decay)
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, 1 - beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, [(1 - beta2**k) ** 0.5 for k in t])
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(p, m, denom, [-lr / (1 - beta1**k) for k in t])


# ---- SGDW, Lion ----------------------------------------------------------------------------


def sgdw(
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
        g = _l2(g, p, l2)
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


def lion(
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
        g = _l2(g, p, l2)
        direction = torch._foreach_lerp(m, g, 1 - beta1)
        torch._foreach_sign_(direction)
        if decay_rate:
            torch._foreach_mul_(p, 1 - decay_rate)
        torch._foreach_add_(p, direction, alpha=-lr)
        torch._foreach_lerp_(m, g, 1 - beta2)


# ---- Muon ----------------------------------------------------------------------------------


def newton_schulz_batched(
    x: torch.Tensor, steps: int, coefficients: NsCoefficients, eps: float
) -> torch.Tensor:
    """functional.newton_schulz on a (k, rows, cols) stack, in x's dtype, as batched matmuls."""
    return newton_schulz(x, steps, coefficients, eps, x.dtype)


def muon(
    params: Tensors,
    grads: Tensors,
    bufs: Tensors,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    ns_steps: int,
    ns_coefficients: NsCoefficients,
    eps: float,
    update_scale: str,
    ns_dtype: torch.dtype,
    decay_rate: float,
    l2: float,
    splits: Sequence[Split | None] | None = None,
    row_sqs: Sequence[torch.Tensor] | None = None,
    normuon_beta2: float = 0.95,
    normuon_eps: float = 1e-8,
) -> None:
    """Muon on matrix-like params, Newton-Schulz batched over each (rows, cols) shape.

    Params with a `split` are orthogonalized one by one (functional.orthogonalize, which
    batches their equal blocks); NorMuon's normalization runs per tensor. No host sync."""
    splits = list(splits) if splits is not None else [None] * len(params)
    position = {id(p): i for i, p in enumerate(params)}
    for p, g, b in by_device_and_dtype(params, grads, bufs):
        where = [position[id(q)] for q in p]
        g = _l2(g, p, l2)
        torch._foreach_lerp_(b, g, 1 - momentum)
        direction = list(torch._foreach_lerp(g, b, momentum)) if nesterov else b
        if decay_rate:
            torch._foreach_mul_(p, 1 - decay_rate)
        plain = [i for i, k in enumerate(where) if splits[k] is None]
        updates: dict[int, torch.Tensor] = {}
        for idx in _by_shape([p[i] for i in plain]):
            idx = [plain[i] for i in idx]
            stacked = torch.stack([_matrix(direction[i]) for i in idx]).to(ns_dtype)
            ortho = newton_schulz_batched(stacked, ns_steps, ns_coefficients, eps)
            ortho = ortho.to(p[idx[0]].dtype)
            for i, o in zip(idx, ortho.unbind(0), strict=True):
                updates[i] = o if p[i].ndim == 2 else o.view(p[i].shape)
        for i, k in enumerate(where):
            if splits[k] is not None:
                updates[i] = orthogonalize(
                    direction[i], ns_steps=ns_steps, ns_coefficients=ns_coefficients, eps=eps,
                    ns_dtype=ns_dtype, split=splits[k], update_scale=update_scale,
                ).to(p[i].dtype)
            if row_sqs is not None:
                batched = splits[k] is not None and splits[k].kind == "batch"
                updates[i] = normuon_normalize(updates[i], row_sqs[k], beta2=normuon_beta2,
                                               eps=normuon_eps, batched=batched)
        by_scale: dict[float, list[int]] = {}
        for i in range(len(p)):
            rows = p[i].size(0)
            by_scale.setdefault(muon_scale(rows, p[i].numel() // max(rows, 1), update_scale),
                                []).append(i)
        for scale, idx in by_scale.items():
            torch._foreach_add_([p[i] for i in idx], [updates[i] for i in idx],
                                alpha=-lr * scale)


# ---- AdamP / SGDP: the scale-invariance test and projection as masks -----------------------


def _views(
    w: torch.Tensor, g: torch.Tensor, delta: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """functional.scale_invariant_view on a (k, rows, cols) stack, as 0/1 masks in w's dtype.

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
        for idx in _by_shape(params):
            w = torch.stack([_matrix(params[i]) for i in idx])
            g = torch.stack([_matrix(grads[i]) for i in idx])
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
        functional.adamp_project with the weights before decay."""
        for idx, w, per_row, whole, _ in self.groups:
            u = torch.stack([_matrix(updates[i]) for i in idx])
            dots = (w * u).sum(dim=-1)
            coef = torch.addcmul(dots.sum(dim=-1, keepdim=True) * whole, dots, per_row)
            # Views write through: updates are fresh tensors or (SGDP) contiguous buffers.
            views = [_matrix(updates[i]) for i in idx]
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


def adamp(
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
    """AdamP (functional.adamp_step's math): test, moments, direction, projection, decay."""
    for p, g, m, v, s in by_device_and_dtype(params, grads, exp_avgs, exp_avg_sqs, steps):
        t = step_values(s)
        projection = _Projection(p, g, delta, eps)
        g = _l2_by_ratio(g, p, projection, l2, wd_ratio)
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, 1 - beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, [(1 - beta2**k) ** 0.5 for k in t])
        torch._foreach_add_(denom, eps)
        numer = torch._foreach_lerp(g, m, beta1) if nesterov else m
        update = list(torch._foreach_div(numer, denom))
        projection.project(update)
        _decay_by_ratio(p, projection, decay_rate, wd_ratio)
        torch._foreach_mul_(update, [-lr / (1 - beta1**k) for k in t])
        torch._foreach_add_(p, update)


def sgdp(
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
    """SGDP (functional.sgdp_step's math); without Nesterov the buffer keeps the projection."""
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


# ---- NovoGrad, FAdam, SCALE ----------------------------------------------------------------


def novograd(
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
    """NovoGrad (functional.novograd_step's math); the layer norms stay 0-d device tensors."""
    for p, g, m, v, s in by_device_and_dtype(params, grads, exp_avgs, exp_avg_sqs, steps):
        first = [k == 1.0 for k in step_values(s)]  # CPU counters: no device read
        g = _l2(g, p, l2)
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


def fadam(
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
    """FAdam (functional.fadam_step's math); RMS values and clips stay on the device."""
    for p, g, m, f, s in by_device_and_dtype(params, grads, exp_avgs, fims, steps):
        t = step_values(s)
        g = _l2(g, p, l2)
        root_n = [max(x.numel(), 1) ** 0.5 for x in g]
        rms = torch.stack(torch._foreach_div(torch._foreach_norm(g), root_n))
        # eps_t = eps*min(1, RMS(g)), or eps where g is all zero
        eps_t = torch.where(rms > 0, rms.clamp(max=1.0) * eps, torch.full_like(rms, eps))
        b2 = [beta2 * (1 - beta2 ** (k - 1)) / (1 - beta2**k) for k in t]
        torch._foreach_mul_(f, b2)
        torch._foreach_addcmul_(f, g, g, [1 - b for b in b2])
        denom = torch._foreach_sqrt(f) if power == 0.5 else torch._foreach_pow(f, power)
        torch._foreach_add_(denom, list(eps_t.unbind(0)))
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


def scale(
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
    """SCALE's normalized update (functional.scale_step's math), row norms stacked per shape."""
    for p, g, b, d in by_device_and_dtype(params, grads, bufs, norm_dims):
        g = _l2(g, p, l2)
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
            direction = torch.stack([_matrix(g[i]) for i in idx])
            root_n = (cols if dim == 1 else rows) ** 0.5
            norms = torch.linalg.vector_norm(direction, dim=1 + dim, keepdim=True)
            step = (lr * root_n) / norms.clamp_(min=eps * root_n)
            factors.extend(step.unbind(0))
            order.extend(idx)
        if decay_rate:
            torch._foreach_mul_(p, 1 - decay_rate)
        if all(p[i].is_contiguous() for i in order):  # the 2-D views write into p
            views = [_matrix(p[i]) for i in order]
            torch._foreach_addcmul_(views, [_matrix(g[i]) for i in order], factors, value=-1)
            continue
        for i, factor in zip(order, factors, strict=True):
            p[i].sub_((_matrix(g[i]) * factor).reshape(p[i].shape))


__all__ = [
    "adamp",
    "adamw",
    "fadam",
    "lion",
    "muon",
    "newton_schulz_batched",
    "novograd",
    "scale",
    "sgdp",
    "sgdw",
    "step_values",
]
