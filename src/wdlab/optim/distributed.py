"""Shard-aware helpers: what the optimizers and the monitor need to run on DTensor (FSDP2,
tensor-parallel) and DDP parameters and reach the one-process result.

Why DTensor ops, not `.to_local()` math: an op on a DTensor propagates its sharding, so an
elementwise update runs on the local shard with no communication, and a reduction (a norm,
a dot, a row sum across a sharded dim) comes back as a Partial DTensor that is all-reduced
when a nonlinear op or `full_tensor()` needs it (but not on `float()`: see `scalar`). That is the only
communication the math needs, and it is correct for every placement (Shard(0) of FSDP2,
Shard(1) of a column-parallel layer, Replicate), where hand-written `.to_local()` math would
need one explicit all_reduce per statistic and per placement. What DTensor cannot do is read
a pointer: wdlab.optim.native refuses DTensors, and the chunked path does not slice them
(a slice across a sharded dim would gather it), so they take the "whole" torch path.

Muon is the one update that is not a reduction of local pieces: Newton-Schulz needs the
full matrix. `gathered_update` gathers each matrix on one owner rank (round robin), runs the
function there, and hands every rank its shard back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    """fn(full_tensor, index) for every tensor, each computed on one rank, placed like the input.

    Plain tensors are handed to fn directly (every rank computes its own, as under DDP where
    each rank holds the same replica). For sharded DTensors the i-th one is owned by rank
    i % world of its mesh: every rank all-gathers it (the collective needs every rank), only
    the owner runs fn, the owner broadcasts the result, and each rank keeps its own shard
    (a local slice, no further communication). Returns DTensors with the inputs' placements.
    """
    out: list[torch.Tensor] = []
    for i, t in enumerate(tensors):
        if not is_sharded(t):
            out.append(fn(full(t), i))
            continue
        mesh = t.device_mesh
        if mesh.ndim != 1:
            # A 2-D mesh (HSDP, FSDP x TP): gather on all ranks; every rank computes.
            whole = fn(t.full_tensor(), i).to(t.dtype)
        else:
            group = mesh.get_group()
            ranks = dist.get_process_group_ranks(group)
            owner = ranks[i % len(ranks)]
            gathered = t.full_tensor()
            if dist.get_rank() == owner:
                whole = fn(gathered, i).to(t.dtype).contiguous()
            else:
                whole = torch.empty_like(gathered)
            dist.broadcast(whole, src=owner, group=group)
        replicated = DTensor.from_local(whole, t.device_mesh, [Replicate()] * t.device_mesh.ndim,
                                        run_check=False)
        out.append(replicated.redistribute(t.device_mesh, t.placements))
    return out

