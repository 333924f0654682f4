"""Which implementation runs a group's update: the `impl=` keyword every optimizer takes.

Every family has one reference implementation (functional/<family>.py's <family>_step: plain
torch ops per tensor, on CPU cut into cache-sized blocks) and separately named fast paths:
  "native"    CPU kernels: wdlab's C kernels (kernels.c), or for Adam-type updates torch's
              fused kernels; only plain dense contiguous tensors of the kinds they check
  "foreach"   torch._foreach_* over the group, per device and dtype, with no host sync
              inside step() (functional/<family>.py's <family>_foreach): every non-CPU device
  "compiled"  a torch.compile'd update (all but SCALE and Muon; seconds of compile on first
              use): elementwise updates as one fused pass, the per-tensor statistics of
              NovoGrad, FAdam and AdamP/SGDP inside the graph (no host read)
"auto" (the default) picks per group and device: "native" on CPU where the kernels take the
tensors, the reference path on other CPU tensors (its cache blocking beats foreach there, and
a CPU has no host sync to avoid), "foreach" on every other device.
Decided each step from the tensors at hand, so a group that moves device follows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

IMPLS = ("auto", "reference", "native", "foreach", "compiled")

LEGACY_MODES = {
    "auto": "auto",
    "native": "native",
    "chunked": "reference",
    "whole": "reference",
    "compiled": "compiled",
}
"""The older `mode=` keyword of SGDW, Lion, NovoGrad, FAdam and SCALE, mapped onto impl."""

FUSED_TO_IMPL = {None: "auto", True: "native", False: "reference"}
"""AdamW's older `fused=` keyword (its "native" is torch's fused Adam kernel)."""

# The mode name the functional <family>_step functions take for each concrete impl.
FUNCTIONAL_MODE = {"reference": "chunked", "native": "native", "compiled": "compiled",
                   "auto": "auto"}


def impl_from(
    impl: str | None, *, mode: Any = None, fused: Any = None, owner: str
) -> str:
    """The impl a constructor stores, from `impl=` and the legacy `mode=` / `fused=` keywords.

    Both given and disagreeing is an error naming both; a bad legacy value names its keyword.
    """
    legacy: str | None = None
    if mode is not None:
        if mode not in LEGACY_MODES:
            raise ValueError(
                f"mode must be one of {', '.join(LEGACY_MODES)}; got {mode!r} (mode= is the "
                f"older name of impl=: one of {', '.join(IMPLS)})"
            )
        legacy = LEGACY_MODES[mode]
    if fused is not None:
        if fused not in (True, False):
            raise ValueError(f"fused must be None, True or False, got {fused!r}")
        legacy = FUSED_TO_IMPL[fused]
    if impl is None:
        return legacy or "auto"
    if legacy is not None and legacy != impl:
        raise ValueError(
            f"{owner}: impl={impl!r} contradicts the older keyword given with it "
            f"(it means impl={legacy!r}); pass impl= alone"
        )
    return impl


def check_impl(group: dict[str, Any], offered: Sequence[str], owner: str) -> None:
    """The group's "impl" is one of IMPLS and one this optimizer has."""
    impl = group["impl"]
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}; got {impl!r}")
    if impl != "auto" and impl not in offered:
        raise ValueError(
            f"impl={impl!r} is not available for {owner}; choose one of "
            f"{', '.join(['auto', *offered])}"
        )


def by_device(params: Sequence[torch.Tensor]) -> dict[torch.device, list[int]]:
    """Indices of `params` per device, in order of first appearance."""
    out: dict[torch.device, list[int]] = {}
    for i, p in enumerate(params):
        out.setdefault(p.device, []).append(i)
    return out


def by_device_and_dtype(
    *columns: Sequence[torch.Tensor | None],
) -> list[list[list[Any]]]:
    """The parallel `columns` split into buckets of one (device, dtype) of the first column,
    as torch's multi-tensor kernels need; each bucket is a list of columns."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(columns[0]):
        assert t is not None
        buckets.setdefault((t.device, t.dtype), []).append(i)
    return [[[col[i] for i in idx] for col in columns] for idx in buckets.values()]


def choose(
    group: dict[str, Any],
    columns: Sequence[Sequence[Any]],
    native_ok: Callable[..., bool] | None,
    why_not_native: Callable[[], str | None] | None = None,
    *,
    callee_resolves_auto: bool = False,
) -> list[tuple[str, list[int]]]:
    """(concrete impl, indices) per device of columns[0] (the params): the group's impl there.

    `native_ok(*columns_at_those_indices)` says whether the native path takes them (None: the
    family has no native path). An explicit "native" that cannot run is a ValueError naming why.
    callee_resolves_auto=True: "auto" on CPU stays "auto", for the functional <family>_step
    functions that pick native or reference themselves (per call, with the same check), so the
    check is not paid twice per step.
    """
    from wdlab.optim.distributed import any_dtensor

    wanted = group["impl"]
    plan: list[tuple[str, list[int]]] = []
    for device, idx in by_device(columns[0]).items():
        impl = wanted
        if any_dtensor(pick(columns[0], idx)):
            # Sharded params: the reference path reduces its statistics across shards
            # (wdlab.optim.distributed); the foreach paths' stacked statistics do not (yet).
            if wanted in ("foreach", "compiled"):
                raise ValueError(
                    f"impl={wanted!r} does not take DTensor (FSDP2/tensor-parallel) params "
                    "yet; use impl='auto' or impl='reference'"
                )
            if wanted == "auto":
                plan.append(("auto" if callee_resolves_auto else "reference", idx))
                continue
        if wanted == "auto" and device.type == "cpu" and callee_resolves_auto:
            plan.append(("auto", idx))
            continue
        fits = native_ok is not None and wanted in ("auto", "native") and native_ok(
            *[pick(column, idx) for column in columns]
        )
        if wanted == "auto":
            impl = "foreach" if device.type != "cpu" else "native" if fits else "reference"
        elif wanted == "native" and not fits:
            why = (why_not_native() if why_not_native else None) or (
                "the tensors are not all contiguous CPU float32/float64 of one dtype"
            )
            raise ValueError(f"impl='native' cannot run: {why}; use impl='auto' to fall back")
        plan.append((impl, idx))
    return plan


def pick(values: Sequence[Any], idx: Sequence[int]) -> list[Any]:
    return [values[i] for i in idx]


@functools.cache
def _cpu_has_fast_bf16() -> bool:
    """bf16 dot-product instructions (AVX512-BF16, AMX-BF16, Arm BF16; read from Linux's
    /proc/cpuinfo), else, where the flags are unknown, whether oneDNN runs bf16 matmuls at all
    (AVX-512 BW/VL/DQ). Without either, torch emulates bf16 matmuls element by element."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def matmul_dtype(device: torch.device) -> torch.dtype:
    """The dtype Muon's Newton-Schulz matmuls run in when ns_dtype="auto".

    bfloat16 where matmuls are fast in it: CUDA/XPU GPUs and CPUs with bf16 dot-product
    instructions; float32 on other CPUs, where bfloat16 matmuls are emulated (a 1024x1024
    matmul took 2.5 s against 25 ms in float32 on the AVX2 CPU of docs/performance.md) and
    on devices not known here.
    """
    if device.type in ("cuda", "xpu"):
        return torch.bfloat16
    if device.type == "cpu":
        return torch.bfloat16 if _cpu_has_fast_bf16() else torch.float32
    return torch.float32
