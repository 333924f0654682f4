"""Shard-aware helpers: what the optimizers and the monitor need to run on DTensor (FSDP2,
tensor-parallel) and DDP parameters and reach the one-process result.

Why DTensor ops, not `.to_local()` math: an op on a DTensor propagates its sharding, so an
elementwise update runs on the local shard with no communication, and a reduction (a norm,
a dot, a row sum across a sharded dim) comes back as a Partial DTensor that DTensor
all-reduces when a nonlinear op, an in-place op on a replicated tensor or `full_tensor()`
needs the value. That is the only communication the math needs, and it is right for every
placement (Shard(0) of FSDP2, Shard(1) of a column-parallel layer, Replicate), where
`.to_local()` math would need one hand-placed all_reduce per statistic and placement.
Three gaps, handled here and at the call sites:
  - float()/.item() of a Partial DTensor returns the local partial value (torch 2.13):
    every Python-side decision reads through `scalar`;
  - an unevenly sharded DTensor cannot be flattened (reshape(-1), view(1, -1)): whole-tensor
    sums are taken over all dims instead;
  - DTensor has no sharding rule for torch._fused_sgd_ and no data pointer for the C kernels:
    wdlab.optim.native refuses DTensors, and the chunked path does not slice them (a slice
    across the sharded dim would gather it), so they take the per-op "whole" torch path.
Under DDP every rank holds full plain replicas with all-reduced gradients: nothing changes.

Muon is the one update that is not a reduction of local pieces: Newton-Schulz needs the
full matrix. `gathered_update` gathers the matrices, runs the function on one owner rank
each (round robin, in parallel) and hands every rank its shards back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

try:  # torch.distributed can be built without DTensor (some platforms): then nothing is one.
    from torch.distributed.tensor import DTensor, Replicate
except ImportError:  # pragma: no cover - torch builds without distributed
    DTensor = None  # type: ignore[assignment,misc]
    Replicate = None  # type: ignore[assignment,misc]


def is_dtensor(t: object) -> bool:
    """Whether `t` is a torch.distributed.tensor.DTensor (an FSDP2 or TP parameter/state)."""
    return DTensor is not None and isinstance(t, DTensor)


def any_dtensor(tensors: Sequence[torch.Tensor | None]) -> bool:
    return any(is_dtensor(t) for t in tensors)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank: all-gathers a sharded DTensor, all-reduces a Partial one;
    a plain tensor is returned as it is."""
    return t.full_tensor() if is_dtensor(t) else t


def scalar(t: torch.Tensor) -> float:
    """float(t) of a one-element tensor, all-reduced first where it is a Partial DTensor.

    Needed: torch 2.13's float()/.item() of a Partial DTensor (the norm of a sharded tensor)
    returns this rank's local partial value without a warning, so every decision read in
    Python from a DTensor statistic must come through here.
    """
    return float(full(t))


def settled(t: torch.Tensor) -> torch.Tensor:
    """`t` with any Partial placement all-reduced to Replicate (a sharded or plain tensor is
    returned as it is): what may be stored in optimizer state and checkpointed."""
    if is_dtensor(t) and any(p.is_partial() for p in t.placements):
        placements = [Replicate() if p.is_partial() else p for p in t.placements]
        return t.redistribute(t.device_mesh, placements)
    return t


def replicate_as(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Plain `t` (the same on every rank) as a replicated DTensor on `like`'s mesh, so it can
    meet `like` in one op; `t` itself when `like` is plain."""
    if not is_dtensor(like):
        return t
    mesh = like.device_mesh
    return DTensor.from_local(t, mesh, [Replicate()] * mesh.ndim, run_check=False)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's piece of a DTensor (the tensor itself when plain)."""
    return t.to_local() if is_dtensor(t) else t


def is_sharded(t: torch.Tensor) -> bool:
    """Whether some rank holds only part of `t` (a DTensor with a Shard or Partial placement)."""
    return is_dtensor(t) and not all(p.is_replicate() for p in t.placements)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0 of the default group, or the only process: the one that writes logs."""
    return rank_and_world()[0] == 0


def gathered_update(
    tensors: Sequence[torch.Tensor], fn: Callable[[torch.Tensor, int], torch.Tensor]
) -> list[torch.Tensor]:
    """fn(whole_tensor, index) for every tensor, each computed once, placed like the input.

    Plain tensors are handed to fn directly (every rank computes its own, as under DDP where
    each rank holds the same replica). A sharded DTensor on a 1-D mesh (FSDP2) is owned by
    rank i % world of its mesh: every rank all-gathers the tensors (the collective needs every
    rank), each rank runs fn on the ones it owns (so the work is split and runs in parallel),
    then each owner broadcasts its results (cast to the input's dtype) and every rank keeps its
    own shard (a local slice). A replicated DTensor, or one on a 2-D mesh (HSDP, FSDP x TP),
    is gathered and computed on every rank. Returns tensors placed like the inputs.

    Memory: the whole tensors of one call are held at once on every rank (as Moonlight's
    ZeRO-1 Muon does); call it per bucket of params to bound that.
    """
    out: list[torch.Tensor | None] = [None] * len(tensors)
    owned: list[tuple[int, torch.Tensor, int, Any]] = []  # (index, whole, owner rank, group)
    for i, t in enumerate(tensors):
        if not is_dtensor(t):
            out[i] = fn(t, i)
            continue
        whole = t.full_tensor()
        if not is_sharded(t) or t.device_mesh.ndim != 1:
            out[i] = _placed_like(fn(whole, i).to(t.dtype), t)
            continue
        group = t.device_mesh.get_group()
        ranks = dist.get_process_group_ranks(group)
        owned.append((i, whole, ranks[i % len(ranks)], group))
    me = dist.get_rank() if owned else -1
    results = {i: fn(whole, i).to(whole.dtype).contiguous() if owner == me else whole
               for i, whole, owner, _ in owned}
    works = [dist.broadcast(results[i], src=owner, group=group, async_op=True)
             for i, _, owner, group in owned]
    for work in works:
        work.wait()
    for i, _, _, _ in owned:
        out[i] = _placed_like(results[i], tensors[i])
    return out  # type: ignore[return-value]


def _placed_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The whole tensor (equal on every rank) as a DTensor placed like `like`: no
    communication, each rank slices its shard."""
    mesh = like.device_mesh
    replicated = DTensor.from_local(whole, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return replicated.redistribute(mesh, like.placements)
