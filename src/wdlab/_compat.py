"""torch APIs that are newer than the lowest torch wdlab declares, or private, behind feature
checks: the one place that knows which torch has what.

CI runs the whole suite on the lowest torch pyproject.toml declares and on the current one
(.ci/run, README "Tests"). Code elsewhere calls these helpers instead of such APIs directly,
so a torch that lacks one degrades to an equivalent public computation instead of failing
on the first step (torch 2.5 has no `torch.nn.utils.get_total_norm`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def total_norm(tensors: Iterable[Any], norm_type: float = 2.0) -> Any:
    """The norm of all `tensors` together (as if concatenated), as a 0-d tensor.

    torch >= 2.6: `torch.nn.utils.get_total_norm` (foreach kernels). Older: the norm of the
    per-tensor norms, which is the same quantity (equal up to float rounding)."""
    import torch

    tensors = [t for t in tensors if t is not None]
    native = getattr(torch.nn.utils, "get_total_norm", None)
    if native is not None:
        return native(tensors, norm_type=norm_type)
    if not tensors:
        return torch.tensor(0.0)
    norms = [torch.linalg.vector_norm(t.detach(), norm_type) for t in tensors]
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]),
                                    norm_type)


# ---- torch's fused optimizer kernels (private: torch._fused_*) -----------------------------
_FUSED = ("_fused_adam_", "_fused_adamw_", "_fused_sgd_")


def fused_kernel_devices() -> list[str]:
    """Device types on which torch's fused Adam/AdamW/SGD kernels run; empty on a torch that
    lacks any of them (or the private query), so every caller takes its unfused path."""
    import torch

    if not all(hasattr(torch, name) for name in _FUSED):
        return []
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return ["cpu", "cuda"]  # torch 2.4+ has the kernels on both
    return list(_get_fused_kernels_supported_devices())


def fused_adam(decoupled: bool) -> Any:
    """torch's fused AdamW (decoupled) or Adam (l2) kernel; check fused_kernel_devices first."""
    import torch

    return torch._fused_adamw_ if decoupled else torch._fused_adam_


def fused_sgd() -> Any:
    """torch's fused SGD kernel; check fused_kernel_devices first."""
    import torch

    return torch._fused_sgd_


def dispatch_mode_class() -> type:
    """torch's TorchDispatchMode (private module path), for counting ops and host syncs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    return TorchDispatchMode


# ---- torch.distributed's rendezvous store (private: distributed_c10d._get_default_store) ---


def default_store() -> Any:
    """The key-value store the default process group rendezvoused through (torchrun's), or
    None on a torch without the private accessor (then failures of other ranks end the run
    through the broken collective alone, without their line)."""
    from torch.distributed import distributed_c10d

    getter = getattr(distributed_c10d, "_get_default_store", None)
    try:
        return getter() if getter is not None else None
    except (RuntimeError, ValueError):
        return None
