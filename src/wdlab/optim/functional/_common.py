"""What every family's paths share: the mode names, the reference path's cache-blocked loop
(foreach_elementwise), the compiled-path cache, the checks for torch's fused kernels and the
small list helpers of the foreach paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from wdlab import _compat
from wdlab.optim import _native as native
from wdlab.optim.distributed import is_dtensor

# ---- the reference path's elementwise loop (AdamW, SGDW, Lion, NovoGrad, FAdam, SCALE, ...) --
# Why chunks: a chain of separate torch ops re-reads every tensor from memory once per op;
# slicing each tensor into blocks that fit in cache lets the whole chain run on one block while
# it is there, so memory sees roughly one read and one write per tensor (docs/performance.md).

CHUNK_NUMEL = 1 << 18
"""Elements per block in "chunked" mode (1 MB of fp32 per tensor): fastest of 2^16..2^19."""

ELEMENTWISE_MODES = ("auto", "native", "chunked", "whole", "compiled")
"""How an elementwise update runs. "auto" (the default): "native" where wdlab.optim._native's
one-pass C kernels take the tensors (contiguous CPU float32/float64), else "chunked"."""


# NovoGrad, FAdam and SCALE each need one statistic over a whole tensor (or per row) before
# their elementwise pass: a norm read first, then the update through foreach_elementwise per
# tensor with that statistic as a Python scalar (or a (rows, 1) / (1, cols) factor). The
# per-tensor statistics cost a host sync per tensor, so their reference functions take the
# eager modes ("auto", "native", "chunked", "whole"), not "compiled".
EAGER_MODES = ("auto", "native", "chunked", "whole")


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


def native_multi_or_mode(mode: str, name: str,
                         tensor_lists: Sequence[Sequence[torch.Tensor | None]],
                         *scalars: Any) -> str | None:
    """For the multi-tensor kernels (sgdw, lion): None when kernels.c ran the step, else the
    mode the caller's torch path runs in. "auto" pays one check of the tensors per step
    (run_multi's if_fit), not `supports` and then run_multi's own; an explicit "native"
    that cannot run is resolve_mode's error."""
    if mode not in ("auto", "native"):
        return mode
    if mode == "auto" and native.run_multi(name, tensor_lists, *scalars, if_fit=True):
        return None
    if resolve_mode(mode, *tensor_lists) == "native":
        native.run_multi(name, tensor_lists, *scalars)
        return None
    return "chunked"


COMPILE_BACKEND = "inductor"
"""The torch.compile backend of impl="compiled" (torch's default, which generates fused C++ /
Triton kernels). "aot_eager" traces the same graph without generating code: what the tests
use to check the compiled paths' math in seconds, as inductor's code generation is torch's."""

_COMPILED: dict[tuple[Callable[..., Any], str], Callable[..., Any]] = {}


def compiled_once(update: Callable[..., Any]) -> Callable[..., Any]:
    """torch.compile(update) once per process and backend; dynamic shapes so every tensor
    shares one graph."""
    key = (update, COMPILE_BACKEND)
    fn = _COMPILED.get(key)
    if fn is None:
        fn = _COMPILED[key] = torch.compile(update, dynamic=True, backend=COMPILE_BACKEND)
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
        fn = compiled_once(update)
        cache: dict[torch.dtype, dict[str, Any]] = {}
        for tensors in zip(*tensor_lists, strict=True):
            dtype = tensors[0].dtype  # type: ignore[union-attr]
            if dtype not in cache:
                cache[dtype] = scalar_tensors(kwargs, dtype)
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


def scalar_tensors(scalars: Mapping[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Python-float scalars as 0-d CPU tensors (dtype's, fp32 for half types: a bf16 lr would
    keep three digits), so a compiled graph takes a changing lr without recompiling; other
    values (bools, ints, tensors) as they are."""
    wide = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    return {k: torch.tensor(v, dtype=wide) if isinstance(v, float) else v
            for k, v in scalars.items()}


def _flat_if_elementwise(tensors: Sequence[torch.Tensor | None]) -> Sequence[Any]:
    """1-D views when all tensors share one contiguous shape, so every rank shares a graph;
    otherwise the tensors, a 0-d one as a 1-element view: torch 2.13's torch.compile drops
    in-place writes to 0-d tensor inputs (NovoGrad's per-layer second moment), with every
    backend, while a view's write goes through."""
    first = tensors[0]
    assert first is not None
    if all(t is None or (t.shape == first.shape and t.is_contiguous()) for t in tensors):
        return [None if t is None else t.view(-1) for t in tensors]
    return [t.view(1) if t is not None and t.ndim == 0 else t for t in tensors]


# ---- torch's fused Adam/SGD kernels -------------------------------------------------------


def use_fused(params: Sequence[torch.Tensor], fused: bool | None) -> bool:
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


# Where torch's fused Adam/SGD kernels run, as wdlab uses them: CPU and CUDA (read once).
_FUSED_DEVICES = frozenset(_compat.fused_kernel_devices()) & {"cpu", "cuda"}


def fusable(*tensors: torch.Tensor) -> bool:
    """Whether torch's fused CPU/CUDA Adam/SGD kernels can take these tensors (same layout)."""
    first = tensors[0]
    return first.device.type in _FUSED_DEVICES and all(
        t.is_contiguous() and t.dtype == first.dtype and t.device == first.device for t in tensors
    )


def sgd_fusable(*tensors: torch.Tensor | None) -> bool:
    """fusable for torch's fused SGD, minus CPU half types: torch 2.12-2.13's CPU kernel skips
    whole SIMD blocks of bfloat16/float16 tensors (pytorch/pytorch#191763)."""
    present = [t for t in tensors if t is not None]
    if any(is_dtensor(t) for t in present):
        return False  # DTensor has no sharding rule for _fused_sgd_ (torch 2.13)
    half = present[0].device.type == "cpu" and present[0].dtype in (torch.bfloat16, torch.float16)
    return not half and fusable(*present)


def by_dtype(rows: list[tuple[torch.Tensor, ...]]) -> list[list[list[torch.Tensor]]]:
    """Group parallel tensor tuples by (device, dtype), as torch's fused kernels need."""
    buckets: dict[tuple[torch.device, torch.dtype], list[tuple[torch.Tensor, ...]]] = {}
    for row in rows:
        buckets.setdefault((row[0].device, row[0].dtype), []).append(row)
    return [[list(col) for col in zip(*bucket, strict=True)] for bucket in buckets.values()]


# ---- small helpers of the foreach paths -----------------------------------------------------

Tensors = list[torch.Tensor]


def step_values(steps: Sequence[torch.Tensor]) -> list[float]:
    """Increment the CPU step counters and read them, in one stack (no device involved)."""
    steps = list(steps)
    torch._foreach_add_(steps, 1)
    if len(steps) == 1:
        return [float(steps[0])]
    return torch.stack(steps).tolist()


def with_l2(grads: Tensors, params: Tensors, l2: float) -> Tensors:
    """g + l2*w as new tensors (the gradients are not touched), or the gradients when l2 == 0."""
    return list(torch._foreach_add(grads, params, alpha=l2)) if l2 else grads


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """t as (size(0), -1): the row layout of Muon, AdamP/SGDP and SCALE (a view if it can)."""
    return t if t.ndim == 2 else t.reshape(t.size(0), -1)


def by_shape(tensors: Sequence[torch.Tensor]) -> list[list[int]]:
    """Indices of tensors with ndim >= 2, grouped by their (rows, cols) matrix shape."""
    out: dict[tuple[int, int], list[int]] = {}
    for i, t in enumerate(tensors):
        if t.ndim >= 2:
            out.setdefault((t.size(0), math.prod(t.shape[1:])), []).append(i)
    return list(out.values())



def adam_denominators(
    v: Tensors,
    g: Tensors,
    beta2: float | list[float],
    eps: float | Tensors,
    *,
    bias_correction2: float | list[float] | None = None,
    sqrt_of_corrected: bool = False,
    power: float = 0.5,
) -> Tensors:
    """Advance Adam's second moments in place, v <- beta2*v + (1 - beta2)*g^2 (one beta2, or
    one per tensor), and return the denominators of the update as new tensors:
      bias_correction2=c:   sqrt(v)/sqrt(c) + eps (torch's AdamW order; one c or one per
                            tensor), or sqrt(v/c) + eps with sqrt_of_corrected=True
                            (schedulefree's order)
      without it:           v^power + eps (power 0.5: the square root; FAdam's Fisher power)
    The two orders round differently: each family keeps its peer's, to match it bit for bit.
    eps: one number, or one (0-d tensor) per tensor."""
    torch._foreach_mul_(v, beta2)
    torch._foreach_addcmul_(v, g, g, [1 - b for b in beta2] if isinstance(beta2, list)
                            else 1 - beta2)
    if bias_correction2 is not None and sqrt_of_corrected:
        denom = list(torch._foreach_div(v, bias_correction2))
        torch._foreach_sqrt_(denom)
    else:
        denom = list(torch._foreach_sqrt(v) if power == 0.5 else torch._foreach_pow(v, power))
        if isinstance(bias_correction2, list):
            torch._foreach_div_(denom, [c**0.5 for c in bias_correction2])
        elif bias_correction2 is not None:
            torch._foreach_div_(denom, bias_correction2**0.5)
    torch._foreach_add_(denom, eps)
    return denom
