"""The update math of wdlab's optimizers as plain functions over lists of tensors.

Classes in this package keep state and validate; these functions only compute, so a
fused or compiled path can replace the math without touching the bookkeeping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from wdlab import _compat
from wdlab.optim import native, polar_express
from wdlab.optim.distributed import gathered_update, is_dtensor, scalar

# ---- shared elementwise machinery (AdamW, SGDW, Lion, AdamP, SGDP) -------------------------
# Why chunks: a chain of separate torch ops re-reads every tensor from memory once per op;
# slicing each tensor into blocks that fit in cache lets the whole chain run on one block while
# it is there, so memory sees roughly one read and one write per tensor (docs/performance.md).

CHUNK_NUMEL = 1 << 18
"""Elements per block in "chunked" mode (1 MB of fp32 per tensor): fastest of 2^16..2^19."""

ELEMENTWISE_MODES = ("auto", "native", "chunked", "whole", "compiled")
"""How an elementwise update runs. "auto" (the default): "native" where wdlab.optim.native's
one-pass C kernels take the tensors (contiguous CPU float32/float64), else "chunked"."""


def resolve_mode(mode: str, *tensor_lists: Sequence[torch.Tensor | None]) -> str:
    """"auto" -> "native" when the C kernels take these tensors, else "chunked"; an explicit
    "native" that cannot run is an error naming why."""
    if mode not in ("auto", "native"):
        return mode
    if native.supports(*tensor_lists):
        return "native"
    if mode == "native":
        why = native.why_unavailable() or (
            "the tensors are not all contiguous CPU float32/float64 of one dtype"
        )
        raise ValueError(f"mode='native' cannot run: {why}; use mode='auto' to fall back")
    return "chunked"

_COMPILED: dict[Callable[..., Any], Callable[..., Any]] = {}


def _compiled(update: Callable[..., Any]) -> Callable[..., Any]:
    """torch.compile(update) once per process; dynamic shapes so every tensor shares one graph."""
    fn = _COMPILED.get(update)
    if fn is None:
        fn = _COMPILED[update] = torch.compile(update, dynamic=True)
    return fn


def foreach_elementwise(
    update: Callable[..., None],
    tensor_lists: Sequence[Sequence[torch.Tensor | None]],
    scalars: Mapping[str, Any] | None = None,
    *,
    mode: str = "chunked",
    chunk_numel: int = CHUNK_NUMEL,
) -> None:
    """Call `update(*tensors_i, **scalars)` for every index i of the parallel `tensor_lists`.

    The reusable fast path of the elementwise optimizers. `update` must change its tensors
    in place and act on each index of dim 0 independently (elementwise, or row-wise with
    per-row factors of shape (rows, 1)), so that running it on slices gives the same result.
    Modes:
      "whole"     one call per tensor: the reference path, any device and dtype.
      "chunked"   CPU tensors are cut along dim 0 into blocks of about `chunk_numel` elements and
                  `update` runs block by block (a block stays in cache for all its ops). A tensor
                  whose size(0) differs from the first tensor's (a 0-d or broadcast factor), or
                  None, is passed whole to every block. Non-CPU tensors fall back to "whole".
                  Elementwise torch ops round per element, so the result equals "whole".
      "compiled"  `update` is torch.compile'd (dynamic shapes, cached per function) and called
                  once per tensor (as 1-D views when its tensors share one contiguous
                  shape, so ranks do not multiply graphs); Python-float scalars become 0-d
                  tensors (fp32 or fp64) so a changing lr never recompiles.
                  `update` must then avoid `alpha=`/`value=` arguments (they need Python
                  numbers). Opt-in: the first call compiles for seconds and needs a C++
                  compiler; results match eager to float rounding.
    """
    if mode not in ELEMENTWISE_MODES:
        raise ValueError(f"mode must be one of {', '.join(ELEMENTWISE_MODES)}; got {mode!r}")
    if mode in ("auto", "native"):
        mode = "chunked"  # no C kernel behind a generic update: its best torch path
    kwargs = dict(scalars or {})
    if mode == "compiled":
        fn = _compiled(update)
        cache: dict[torch.dtype, dict[str, Any]] = {}
        for tensors in zip(*tensor_lists, strict=True):
            dtype = tensors[0].dtype  # type: ignore[union-attr]
            if dtype not in cache:
                # fp32 scalars for half types: a bf16 lr would keep three digits.
                wide = dtype if dtype in (torch.float32, torch.float64) else torch.float32
                cache[dtype] = {
                    k: torch.tensor(v, dtype=wide) if isinstance(v, float) else v
                    for k, v in kwargs.items()
                }
            fn(*_flat_if_elementwise(tensors), **cache[dtype])
        return
    for tensors in zip(*tensor_lists, strict=True):
        first = tensors[0]
        assert first is not None
        rows = first.size(0) if first.ndim else 1
        row_numel = first[0].numel() if first.ndim > 1 else 1
        block = max(1, chunk_numel // max(row_numel, 1))
        # A DTensor runs whole: its ops act on the local shard; a slice would gather it.
        if mode == "whole" or first.device.type != "cpu" or rows <= block or is_dtensor(first):
            update(*tensors, **kwargs)
            continue
        sliced = [t is not None and t.ndim > 0 and t.size(0) == rows for t in tensors]
        for start in range(0, rows, block):
            end = start + block
            parts = [t[start:end] if s else t for t, s in zip(tensors, sliced, strict=True)]  # type: ignore[index]
            update(*parts, **kwargs)


def _flat_if_elementwise(tensors: Sequence[torch.Tensor | None]) -> Sequence[Any]:
    """1-D views when all tensors share one contiguous shape, so every rank shares a graph."""
    first = tensors[0]
    assert first is not None
    if all(t is None or (t.shape == first.shape and t.is_contiguous()) for t in tensors):
        return [None if t is None else t.view(-1) for t in tensors]
    return tensors


def _use_fused(params: Sequence[torch.Tensor], fused: bool | None) -> bool:
    """Whether torch's fused Adam kernels run on these tensors (fused=None: whenever they can)."""
    if fused is False or not params:
        return False
    devices = _compat.fused_kernel_devices()
    ok = all(p.device.type in devices and p.is_floating_point() for p in params)
    if fused and not ok:
        raise ValueError(
            "fused=True needs floating-point params on one of "
            f"{', '.join(devices)}; pass fused=None to fall back automatically"
        )
    return ok


def _adamw_update(
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
) -> None:
    """One Adam step with torch's meaning of (weight_decay, decoupled); increments state_steps.

    decoupled=True: w <- w*(1 - lr*weight_decay) before the step (AdamW); False: grad +=
    weight_decay*w (Adam's L2). wdlab's "independent" mode is decoupled with weight_decay =
    wd/initial_lr, since lr*wd/initial_lr is exactly the schedule multiplier times wd.
    fused=None uses torch._fused_adamw_/_fused_adam_ where they run (CPU included): that is
    torch.optim.AdamW(fused=True) bit for bit; otherwise (fused=False) the chunked
    single-tensor path, equal to torch's default path bit for bit.
    """
    if not params:
        return
    if _use_fused(params, fused):
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
        foreach_elementwise(_adamw_update, [[param], [grad], [exp_avg], [exp_avg_sq]], scalars)


def _sgdw_update(
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


def _sgdw_update_compiled(
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
    # Same math as _sgdw_update with tensor scalars: inductor fuses it into one pass.
    grad = grad + l2 * param
    if buf is not None:
        new_buf = grad if fresh else buf * momentum + grad * (1 - dampening)
        buf.copy_(new_buf)
        grad = grad + momentum * new_buf if nesterov else new_buf
    param.copy_(param * keep - lr * grad)


def _sgdw_update_fused(
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
    mode = resolve_mode(mode, params, grads, momentum_bufs)
    if mode == "native":
        native.run_multi("sgdw", [params, grads, momentum_bufs], lr, momentum, dampening,
                         nesterov, 1.0 - decay_rate, l2, fresh)
        return
    if mode == "compiled" and fresh:
        mode = "chunked"  # the one first step runs eager: one compiled graph fewer
    if mode == "compiled":
        kernel = _sgdw_update_compiled
    elif (mode == "chunked" and decay_rate and _use_fused(params, None)
          and all(_sgd_fusable(*ts) for ts in zip(params, grads, momentum_bufs, strict=True))):
        # Only with decoupled decay: torch's fused SGD rounds a few elements differently from
        # its for-loop path, and without decay SGDW must equal torch.optim.SGD's default path.
        kernel = _sgdw_update_fused
    else:
        kernel = _sgdw_update
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


def _lion_update(
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


def _lion_update_compiled(
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
    mode = resolve_mode(mode, params, grads, exp_avgs)
    if mode == "native":
        native.run_multi("lion", [params, grads, exp_avgs], lr, beta1, beta2, 1.0 - decay_rate,
                         l2)
        return
    kernel = _lion_update_compiled if mode == "compiled" else _lion_update
    scalars = {"lr": lr, "beta1": beta1, "beta2": beta2, "keep": 1.0 - decay_rate, "l2": l2}
    foreach_elementwise(kernel, [params, grads, exp_avgs], scalars, mode=mode)


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


def muon_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_bufs: list[torch.Tensor],
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
    replicated: bool = False,
    owners_at: Sequence[int | None] | None = None,
) -> None:
    """One Muon step on matrix-like params: W <- W*(1 - decay_rate) - lr*s*O.

    Like torch.optim.Muon the decay uses the plain lr (not lr*s) and comes before the update;
    the buffer sees the raw gradient (plus l2*W in l2 mode). `splits` (one per param) cut a
    param into the matrices Newton-Schulz sees; `row_sqs` (NorMuon's per-row second moments,
    one per param) turn on normuon_normalize. Sharded (DTensor) params, and plain ones with
    `replicated=True` (DDP replicas): the momentum and the update stay where they are, and
    Newton-Schulz runs on each full matrix once, on its owner rank
    (wdlab.optim.distributed.gathered_update; `owners_at`: a step-wide plan_owners).
    """
    splits = list(splits) if splits is not None else [None] * len(params)

    def ortho_of(direction: torch.Tensor, i: int) -> torch.Tensor:
        return orthogonalize(direction, ns_steps=ns_steps, ns_coefficients=ns_coefficients,
                             eps=eps, ns_dtype=ns_dtype, split=splits[i],
                             update_scale=update_scale)

    def apply(i: int, ortho: torch.Tensor) -> None:
        if row_sqs is not None:
            batched = splits[i] is not None and splits[i].kind == "batch"
            ortho = normuon_normalize(ortho.to(params[i].dtype), row_sqs[i],
                                      beta2=normuon_beta2, eps=normuon_eps, batched=batched)
        _muon_apply(params[i], ortho, lr, update_scale, decay_rate)

    together = replicated or any(is_dtensor(p) for p in params)
    directions: list[torch.Tensor] = []
    for i, (param, grad, buf) in enumerate(zip(params, grads, momentum_bufs, strict=True)):
        if l2:
            grad = grad.add(param, alpha=l2)
        direction = muon_direction(grad, buf, momentum=momentum, nesterov=nesterov)
        if together:
            directions.append(direction)  # orthogonalized together below
        else:  # one at a time: a single direction in memory
            apply(i, ortho_of(direction, i))
    if together:
        for i, ortho in enumerate(gathered_update(directions, ortho_of, replicated=replicated,
                                                     owners_at=owners_at)):
            apply(i, ortho)


def _muon_apply(
    param: torch.Tensor, ortho: torch.Tensor, lr: float, update_scale: str, decay_rate: float
) -> None:
    """W <- W*(1 - decay_rate) - lr*s*O (s from the global shape, so shards agree)."""
    scale = muon_scale(param.size(0), param.numel() // max(param.size(0), 1), update_scale)
    if decay_rate:
        param.mul_(1 - decay_rate)
    param.add_(ortho, alpha=-lr * scale)


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


# Where torch's fused Adam/SGD kernels run, as wdlab uses them: CPU and CUDA (read once).
_FUSED_DEVICES = frozenset(_compat.fused_kernel_devices()) & {"cpu", "cuda"}


def _fusable(*tensors: torch.Tensor) -> bool:
    """Whether torch's fused CPU/CUDA Adam/SGD kernels can take these tensors (same layout)."""
    first = tensors[0]
    return first.device.type in _FUSED_DEVICES and all(
        t.is_contiguous() and t.dtype == first.dtype and t.device == first.device for t in tensors
    )


def _sgd_fusable(*tensors: torch.Tensor | None) -> bool:
    """_fusable for torch's fused SGD, minus CPU half types: torch 2.12-2.13's CPU kernel skips
    whole SIMD blocks of bfloat16/float16 tensors (pytorch/pytorch#191763)."""
    present = [t for t in tensors if t is not None]
    if any(is_dtensor(t) for t in present):
        return False  # DTensor has no sharding rule for _fused_sgd_ (torch 2.13)
    half = present[0].device.type == "cpu" and present[0].dtype in (torch.bfloat16, torch.float16)
    return not half and _fusable(*present)


def _by_dtype(rows: list[tuple[torch.Tensor, ...]]) -> list[list[list[torch.Tensor]]]:
    """Group parallel tensor tuples by (device, dtype), as torch's fused kernels need."""
    buckets: dict[tuple[torch.device, torch.dtype], list[tuple[torch.Tensor, ...]]] = {}
    for row in rows:
        buckets.setdefault((row[0].device, row[0].dtype), []).append(row)
    return [[list(col) for col in zip(*bucket, strict=True)] for bucket in buckets.values()]


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
    for row in zip(params, grads, exp_avgs, exp_avg_sqs, state_steps, strict=True):
        param, grad = row[0], row[1]
        view, norms = _projection_view(param, grad, delta, eps)
        if not fused or nesterov or not _fusable(*row[:4]):
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
        # The AdamW kernel decays by lr*weight_decay, so hand it the wanted rate divided by lr.
        wd = l2 if l2 else (decay_rate / lr if lr > 0 else 0.0)
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
    for param, grad, buf in zip(params, grads, momentum_bufs, strict=True):
        view, norms = _projection_view(param, grad, delta, eps)
        tensors = (param, grad) if buf is None else (param, grad, buf)
        if view is None and fused and _sgd_fusable(*tensors):
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
    for group in _by_dtype(free):
        p, g = group[0], group[1]
        bufs = group[2] if momentum else []
        if native.supports(p, g, bufs):
            # One pass: w <- keep*w - lr*d, the buffer as torch's fused SGD keeps it.
            native.run_multi("sgdw", [p, g, bufs or [None] * len(p)],
                             lr if momentum else lr * (1 - dampening), momentum,
                             dampening if momentum else 0.0, nesterov,
                             1 - decay_rate / (1 - momentum), l2, False)
            continue
        if decay_rate:
            torch._foreach_mul_(p, 1 - decay_rate / (1 - momentum))
        # Without momentum torch ignores dampening; clovaai scales g by (1 - dampening).
        step_lr = lr if momentum else lr * (1 - dampening)
        _compat.fused_sgd()(p, g, bufs, weight_decay=l2, momentum=momentum, lr=step_lr,
                          dampening=dampening, nesterov=nesterov, maximize=False,
                          is_first_step=False)


# ---- NovoGrad, FAdam, SCALE ---
# Each needs one statistic over a whole tensor (or per row) before its elementwise pass: a norm
# read first, then the update through foreach_elementwise per tensor with that statistic as a
# Python scalar (or a (rows, 1) / (1, cols) factor). The per-tensor statistics cost a host sync
# per tensor, so these offer the eager modes ("auto", "native", "chunked", "whole"), not
# "compiled".

EAGER_MODES = ("auto", "native", "chunked", "whole")


def _novograd_update(
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
    if beta1 > 0 and _sgd_fusable(param, grad, exp_avg):
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
    shrunk separately. g includes l2*w.
    """
    for param, grad, exp_avg, exp_avg_sq, step_t in zip(
        params, grads, exp_avgs, exp_avg_sqs, state_steps, strict=True
    ):
        if l2:
            grad = grad.add(param, alpha=l2)
        step_t += 1
        first = float(step_t) == 1.0
        on_c = resolve_mode(mode, [param, grad, exp_avg]) == "native"
        norm_sq = native.sum_of_squares(grad) if on_c else scalar(torch.linalg.vector_norm(grad))**2
        exp_avg_sq.fill_(norm_sq if first else beta2 * float(exp_avg_sq) + (1 - beta2) * norm_sq)
        scale = 1.0 / (float(exp_avg_sq) ** 0.5 + eps)
        avg = 1.0 if first or not grad_averaging else 1 - beta1
        in_m = decay_in_momentum and decay_rate > 0 and lr > 0
        gain = avg * scale
        decay_gain = avg * decay_rate / lr if in_m else 0.0
        decays = not decay_in_momentum and decay_rate > 0
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
        foreach_elementwise(_novograd_update, [[param], [grad], [exp_avg]], scalars, mode=mode)


def _fisher_denom(fim: torch.Tensor, eps: float, power: float, sqrt: bool) -> torch.Tensor:
    return (fim.sqrt() if sqrt else fim.pow(power)).add_(eps)


def _fadam_fisher(
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


def _fadam_update(
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
                _fadam_fisher, [[grad], [fim], [param], [sums[0]], [sums[1]]],
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
            _fadam_update, [[param], [grad], [fim], [exp_avg]], scalars, mode=mode
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


def _scale_update(
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
            foreach_elementwise(_scale_update, [[rows], [direction], [step]], scalars, mode=mode)
        else:  # reshape copied: update the tensor itself
            param.mul_(1.0 - decay_rate).sub_((direction * step).reshape(param.shape))
