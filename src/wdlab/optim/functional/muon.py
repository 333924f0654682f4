"""Muon's update: Newton-Schulz orthogonalization (Jordan's quintic or Polar Express), the
`muon_split` blocks, NorMuon's row normalization, the reference path (one tensor at a time, or
gathered to an owner rank when sharded/replicated) and the foreach path (Newton-Schulz batched
over same-shape matrices, no host sync).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from wdlab.optim import polar_express
from wdlab.optim._dispatch import by_device_and_dtype
from wdlab.optim.distributed import gathered_update, is_dtensor
from wdlab.optim.functional._common import (
    Tensors,
    as_matrix,
    by_shape,
    with_l2,
)

# ---- Newton-Schulz orthogonalization (Muon) --------------------------------------------------
# Also the AdamP/SGDP projection math: both reshape a weight into rows (neurons) and act on them.

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Keller Jordan's quintic: the largest slope at zero that still keeps singular values near 1."""

NS_PRESETS = ("jordan", "polar_express")
"""Named ns_coefficients: "jordan" is NS_COEFFICIENTS at every iteration; "polar_express" is
one minimax quintic per iteration (wdlab.optim.polar_express, Amsel et al. 2025)."""

UPDATE_SCALES = ("match_rms_adamw", "original")

Quintic = tuple[float, float, float]
NsCoefficients = str | Quintic | Sequence[Quintic]


def _is_quintic(value: Any) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == 3
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in value))


def check_ns_coefficients(value: Any) -> None:
    """A preset name, one (a, b, c) for every iteration, or a list of them (one per
    iteration, the last repeated); anything else is a ValueError naming ns_coefficients."""
    ok = value in NS_PRESETS if isinstance(value, str) else _is_quintic(value) or (
        isinstance(value, (tuple, list)) and len(value) > 0 and all(map(_is_quintic, value)))
    if not ok:
        raise ValueError(
            f"ns_coefficients must be {' or '.join(repr(n) for n in NS_PRESETS)}, three numbers "
            f"(a, b, c) such as {NS_COEFFICIENTS}, or a list of such triples (one per "
            f"iteration); got {value!r}"
        )


def ns_schedule(coefficients: NsCoefficients, steps: int) -> tuple[tuple[Quintic, ...], float]:
    """The (a, b, c) of each of `steps` iterations and the factor on the input's norm.

    The input is divided by factor*||X||_F: 1 for fixed coefficients, the safety factor 1.01
    for Polar Express (its polynomials assume singular values up to 1.01)."""
    check_ns_coefficients(coefficients)
    if coefficients == "polar_express":
        return polar_express.polar_express(steps), polar_express.SAFETY
    if coefficients == "jordan":
        return (NS_COEFFICIENTS,) * steps, 1.0
    if _is_quintic(coefficients):
        return (tuple(map(float, coefficients)),) * steps, 1.0  # type: ignore[return-value]
    given = [tuple(map(float, c)) for c in coefficients]  # type: ignore[union-attr]
    given += [given[-1]] * (steps - len(given))
    return tuple(given[:steps]), 1.0  # type: ignore[return-value]


def newton_schulz(
    matrix: torch.Tensor,
    steps: int = 5,
    coefficients: NsCoefficients = NS_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Approximate U V^T of a matrix (its "zeroth power") by a quintic Newton-Schulz iteration.

    Works on the wide orientation (transposes when rows > cols) so the Gram matrix is the small
    one, and divides by the Frobenius norm (clamped at eps, as torch.optim.Muon does) so every
    singular value starts inside the iteration's basin. Jordan's fixed quintic does not converge
    to exactly 1: singular values end roughly in [0.7, 1.2], which is all Muon needs; Polar
    Express ("polar_express") takes them much closer to 1 in the same number of steps.
    A 3-D input is a batch of matrices (one norm each, batched matmuls). Returns `dtype`.
    """
    if matrix.ndim not in (2, 3):
        raise ValueError(
            f"newton_schulz needs a 2-D matrix or a 3-D batch of them, got shape "
            f"{tuple(matrix.shape)}"
        )
    schedule, norm_factor = ns_schedule(coefficients, steps)
    x = matrix.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    if x.ndim == 3:
        norm = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
        x = x / (norm * norm_factor if norm_factor != 1 else norm).clamp(min=eps)
        for a, b, c in schedule:
            gram = torch.bmm(x, x.mT)
            poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.baddbmm(x, poly, x, beta=a)
        return x.mT if tall else x
    norm = x.norm()
    x = x / (norm * norm_factor if norm_factor != 1 else norm).clamp(min=eps)
    for a, b, c in schedule:
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b*A + c*A@A
        x = torch.addmm(x, poly, x, beta=a)  # a*X + (b*A + c*A^2) @ X
    return x.T if tall else x


def muon_scale(rows: int, cols: int, update_scale: str) -> float:
    """The factor s in W <- W - lr*s*O for a (rows, cols) matrix (torch's _adjust_lr rules).

    "match_rms_adamw" (Moonlight): 0.2*sqrt(max(A, B)) gives O an RMS of about 0.2, like an
    AdamW update, so AdamW's lr and weight decay carry over. "original" (Keller Jordan):
    sqrt(max(1, A/B)).
    """
    if update_scale == "match_rms_adamw":
        return 0.2 * max(rows, cols) ** 0.5
    if update_scale == "original":
        return max(1.0, rows / cols) ** 0.5
    allowed = ", ".join(UPDATE_SCALES)
    raise ValueError(f"update_scale must be one of {allowed}; got {update_scale!r}")


def muon_direction(
    grad: torch.Tensor, buf: torch.Tensor, *, momentum: float, nesterov: bool
) -> torch.Tensor:
    """Advance the momentum EMA `buf` in place; the direction to orthogonalize (elementwise,
    so it runs on local shards)."""
    buf.lerp_(grad, 1 - momentum)
    return grad.lerp(buf, momentum) if nesterov else buf


SPLITS = ("batch", "rows", "cols")


@dataclass(frozen=True)
class Split:
    """How one parameter is cut into the matrices Newton-Schulz sees (its `muon_split`).

    batch  a tensor of ndim >= 3 is a stack of matrices over its last two dims (MoE experts
           [E, m, n]): each is orthogonalized on its own
    rows   the (size(0), -1) matrix cut along its rows into blocks of `sizes` (fused QKV:
           3 blocks; per-head W_q/W_k/W_v: one block of d_head rows per head)
    cols   the same along its columns (per-head W_o: one block of d_head columns per head)
    """

    kind: str
    sizes: tuple[int, ...] = ()


def parse_split(value: Any, shape: Sequence[int]) -> Split | None:
    """The Split a `muon_split` value asks of a parameter of `shape` (None: the whole matrix).

    Values: None; "batch"; "rows:K" / "cols:K" (K equal blocks); "rows:s1,s2,..." (block
    sizes); or the tuples ("rows", K), ("rows", [s1, s2, ...]). ValueError names muon_split.
    """
    if value is None or isinstance(value, Split):
        return value
    kind, spec = value, None
    if isinstance(value, str) and ":" in value:
        kind, spec = value.split(":", 1)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        kind, spec = value
    shape = tuple(shape)
    fail = (f"muon_split must be None, 'batch', 'rows:K', 'cols:K' or 'rows:s1,s2,...' "
            f"fitting the parameter's shape {shape}; got {value!r}")
    if kind not in SPLITS or (kind == "batch") != (spec is None):
        raise ValueError(fail)
    if kind == "batch":
        if len(shape) < 3:
            raise ValueError(f"{fail} ('batch' needs ndim >= 3)")
        return Split("batch")
    if len(shape) < 2:
        raise ValueError(fail)
    extent = shape[0] if kind == "rows" else math.prod(shape[1:])
    try:
        if isinstance(spec, str):
            spec = [int(x) for x in spec.split(",")]
            spec = spec[0] if len(spec) == 1 else spec
        if isinstance(spec, bool):
            raise ValueError(fail)
        if isinstance(spec, int):
            if spec < 1 or extent % spec:
                raise ValueError(fail)
            sizes = (extent // spec,) * spec
        else:
            sizes = tuple(int(x) for x in spec)
    except (TypeError, ValueError):
        raise ValueError(fail) from None
    if not sizes or min(sizes) < 1 or sum(sizes) != extent:
        raise ValueError(fail)
    return Split(kind, sizes)


def orthogonalize(
    direction: torch.Tensor,
    *,
    ns_steps: int,
    ns_coefficients: NsCoefficients,
    eps: float,
    ns_dtype: torch.dtype,
    split: Split | None = None,
    update_scale: str = "match_rms_adamw",
) -> torch.Tensor:
    """newton_schulz of a (whole) tensor as its (size(0), -1) matrix, in the tensor's shape.

    With a `split`, each block is orthogonalized on its own (equal blocks in one batched call)
    and multiplied by s(block)/s(whole) (muon_scale), so that after the caller's whole-shape
    factor s(whole) every block moves as a matrix of its own shape would.
    """
    ns = (ns_steps, ns_coefficients, eps, ns_dtype)
    if split is None:
        ortho = newton_schulz(direction.reshape(direction.size(0), -1), *ns)
        return ortho.reshape(direction.shape)
    rows = direction.size(0)
    whole = muon_scale(rows, direction.numel() // max(rows, 1), update_scale)
    if split.kind == "batch":
        m, n = direction.shape[-2:]
        stack = direction.reshape(-1, m, n)
        ortho = newton_schulz(stack, *ns) * (muon_scale(m, n, update_scale) / whole)
        return ortho.reshape(direction.shape)
    matrix = direction.reshape(rows, -1)
    dim = 0 if split.kind == "rows" else 1
    blocks = matrix.split(list(split.sizes), dim=dim)
    if len(set(split.sizes)) == 1:  # equal blocks: one batched Newton-Schulz
        shape = blocks[0].shape
        ortho = newton_schulz(torch.stack(blocks), *ns) * (muon_scale(*shape, update_scale)
                                                           / whole)
        parts = list(ortho.unbind(0))
    else:
        parts = [newton_schulz(b, *ns) * (muon_scale(*b.shape, update_scale) / whole)
                 for b in blocks]
    return torch.cat(parts, dim=dim).reshape(direction.shape)


def normuon_normalize(
    ortho: torch.Tensor, row_sq: torch.Tensor, *, beta2: float, eps: float, batched: bool
) -> torch.Tensor:
    """NorMuon's neuron-wise normalization of an orthogonalized update (Li et al. 2025).

    v <- beta2*v + (1 - beta2)*mean_j O_ij^2 (in place; one entry per row of the matrix, per
    expert under a "batch" split), O' = O / (sqrt(v) + eps), then O' rescaled to ||O||_F (per
    matrix), so the update's overall size, and with it update_scale, stays Muon's while rows
    whose updates are persistently large are evened out. Elementwise and row reductions only:
    on FSDP2 shards (rows are what Shard(0) cuts) it needs no communication but the norms.
    """
    row_dims = (-1,) if batched else tuple(range(1, ortho.ndim))
    row_sq.lerp_(ortho.square().mean(dim=row_dims), 1 - beta2)
    denom = row_sq.sqrt().add_(eps)
    normalized = ortho / denom.reshape(*row_sq.shape, *([1] * (ortho.ndim - row_sq.ndim)))
    # per matrix (keepdim: one per expert) or one 0-d ratio for the whole tensor (a 0-d
    # factor also meets any DTensor sharding, an all-ones-shaped one need not)
    norm_dims = (-2, -1) if batched else tuple(range(ortho.ndim))
    before = torch.linalg.vector_norm(ortho, dim=norm_dims, keepdim=batched)
    after = torch.linalg.vector_norm(normalized, dim=norm_dims, keepdim=batched)
    return normalized * (before / after.clamp(min=1e-30))


def normuon_state_like(param: torch.Tensor, split: Split | None) -> torch.Tensor:
    """NorMuon's zero second moment for `param`: one per row (per expert and row under a
    "batch" split), made from the parameter so a sharded one is sharded alike."""
    zeros = torch.zeros_like(param)
    if split is not None and split.kind == "batch":
        return zeros.sum(dim=-1)
    return zeros.sum(dim=tuple(range(1, param.ndim)))


def muon_update(
    grad: torch.Tensor,
    buf: torch.Tensor,
    *,
    momentum: float,
    nesterov: bool,
    ns_steps: int,
    ns_coefficients: NsCoefficients,
    eps: float,
    ns_dtype: torch.dtype,
) -> torch.Tensor:
    """Advance the momentum EMA `buf` in place and return the orthogonalized direction O.

    O has the parameter's shape; tensors with ndim > 2 (conv weights) are orthogonalized as
    their (out, in*k*k) matrix, the flattening timm and optax use.
    """
    direction = muon_direction(grad, buf, momentum=momentum, nesterov=nesterov)
    return orthogonalize(direction, ns_steps=ns_steps, ns_coefficients=ns_coefficients, eps=eps,
                         ns_dtype=ns_dtype)


@dataclass(frozen=True)
class MuonSettings:
    """One Muon step's settings, and the per-tensor work both paths (muon_step, muon_foreach)
    share after the momentum: Newton-Schulz with the tensor's split, NorMuon's normalization
    and the update's scale. Like torch.optim.Muon the decay uses the plain lr (not lr*s) and
    comes before the update; the buffer sees the raw gradient (plus l2*W in l2 mode)."""

    lr: float
    momentum: float
    nesterov: bool
    ns_steps: int
    ns_coefficients: NsCoefficients
    eps: float
    update_scale: str
    ns_dtype: torch.dtype
    decay_rate: float
    l2: float
    normuon_beta2: float = 0.95
    normuon_eps: float = 1e-8

    def orthogonalized(self, direction: torch.Tensor, split: Split | None) -> torch.Tensor:
        """orthogonalize(direction) with this step's Newton-Schulz settings, in ns_dtype."""
        return orthogonalize(direction, ns_steps=self.ns_steps,
                             ns_coefficients=self.ns_coefficients, eps=self.eps,
                             ns_dtype=self.ns_dtype, split=split, update_scale=self.update_scale)

    def normalized(self, ortho: torch.Tensor, row_sq: torch.Tensor | None, split: Split | None,
                   dtype: torch.dtype) -> torch.Tensor:
        """NorMuon's normuon_normalize of `ortho` (cast to the param's dtype) when the tensor
        has a second moment `row_sq`, else `ortho` as it is."""
        if row_sq is None:
            return ortho
        batched = split is not None and split.kind == "batch"
        return normuon_normalize(ortho.to(dtype), row_sq, beta2=self.normuon_beta2,
                                 eps=self.normuon_eps, batched=batched)

    def scale(self, param: torch.Tensor) -> float:
        """muon_scale of the param's global (size(0), -1) shape, so shards agree."""
        rows = param.size(0)
        return muon_scale(rows, param.numel() // max(rows, 1), self.update_scale)


def _per_param(values: Sequence[Any] | None, count: int) -> list[Any]:
    return list(values) if values is not None else [None] * count


def muon_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_bufs: list[torch.Tensor],
    settings: MuonSettings,
    *,
    splits: Sequence[Split | None] | None = None,
    row_sqs: Sequence[torch.Tensor] | None = None,
    replicated: bool = False,
    owners_at: Sequence[int | None] | None = None,
) -> None:
    """One Muon step on matrix-like params, the reference path: W <- W*(1 - decay_rate) - lr*s*O.

    `splits` (one per param) cut a param into the matrices Newton-Schulz sees; `row_sqs`
    (NorMuon's per-row second moments, one per param) turn on normuon_normalize. Sharded
    (DTensor) params, and plain ones with `replicated=True` (DDP replicas): the momentum and
    the update stay where they are, and Newton-Schulz runs on each full matrix once, on its
    owner rank (wdlab.optim.distributed.gathered_update; `owners_at`: a step-wide plan_owners).
    """
    s = settings
    splits = _per_param(splits, len(params))
    row_sq = _per_param(row_sqs, len(params))

    def ortho_of(direction: torch.Tensor, i: int) -> torch.Tensor:
        return s.orthogonalized(direction, splits[i])

    def apply(i: int, ortho: torch.Tensor) -> None:
        param = params[i]
        ortho = s.normalized(ortho, row_sq[i], splits[i], param.dtype)
        if s.decay_rate:
            param.mul_(1 - s.decay_rate)
        param.add_(ortho, alpha=-s.lr * s.scale(param))

    together = replicated or any(is_dtensor(p) for p in params)
    directions: list[torch.Tensor] = []
    for i, (param, grad, buf) in enumerate(zip(params, grads, momentum_bufs, strict=True)):
        if s.l2:
            grad = grad.add(param, alpha=s.l2)
        direction = muon_direction(grad, buf, momentum=s.momentum, nesterov=s.nesterov)
        if together:
            directions.append(direction)  # orthogonalized together below
        else:  # one at a time: a single direction in memory
            apply(i, ortho_of(direction, i))
    if together:
        for i, ortho in enumerate(gathered_update(directions, ortho_of, replicated=replicated,
                                                     owners_at=owners_at)):
            apply(i, ortho)


# ---- the foreach path ----------------------------------------------------------------------


def newton_schulz_batched(
    x: torch.Tensor, steps: int, coefficients: NsCoefficients, eps: float
) -> torch.Tensor:
    """newton_schulz on a (k, rows, cols) stack, in x's dtype, as batched matmuls."""
    return newton_schulz(x, steps, coefficients, eps, x.dtype)


def muon_foreach(
    params: Tensors,
    grads: Tensors,
    bufs: Tensors,
    settings: MuonSettings,
    *,
    splits: Sequence[Split | None] | None = None,
    row_sqs: Sequence[torch.Tensor] | None = None,
) -> None:
    """muon_step's math with Newton-Schulz batched over each (rows, cols) shape, no host sync.

    Params with a `split` are orthogonalized one by one (orthogonalize batches their equal
    blocks); NorMuon's normalization runs per tensor."""
    s = settings
    splits = _per_param(splits, len(params))
    row_sq = _per_param(row_sqs, len(params))
    position = {id(p): i for i, p in enumerate(params)}
    for p, g, b in by_device_and_dtype(params, grads, bufs):
        where = [position[id(q)] for q in p]
        g = with_l2(g, p, s.l2)
        torch._foreach_lerp_(b, g, 1 - s.momentum)
        direction = list(torch._foreach_lerp(g, b, s.momentum)) if s.nesterov else b
        if s.decay_rate:
            torch._foreach_mul_(p, 1 - s.decay_rate)
        plain = [i for i, k in enumerate(where) if splits[k] is None]
        updates: dict[int, torch.Tensor] = {}
        for idx in by_shape([p[i] for i in plain]):
            idx = [plain[i] for i in idx]
            stacked = torch.stack([as_matrix(direction[i]) for i in idx]).to(s.ns_dtype)
            ortho = newton_schulz_batched(stacked, s.ns_steps, s.ns_coefficients, s.eps)
            ortho = ortho.to(p[idx[0]].dtype)
            for i, o in zip(idx, ortho.unbind(0), strict=True):
                updates[i] = o if p[i].ndim == 2 else o.view(p[i].shape)
        for i, k in enumerate(where):
            if splits[k] is not None:
                updates[i] = s.orthogonalized(direction[i], splits[k]).to(p[i].dtype)
            updates[i] = s.normalized(updates[i], row_sq[k], splits[k], p[i].dtype)
        by_scale: dict[float, list[int]] = {}
        for i in range(len(p)):
            by_scale.setdefault(s.scale(p[i]), []).append(i)
        for scale, idx in by_scale.items():
            torch._foreach_add_([p[i] for i in idx], [updates[i] for i in idx],
                                alpha=-s.lr * scale)
