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
    wdlab.optim._native refuses DTensors, and the chunked path does not slice them (a slice
    across the sharded dim would gather it), so they take the per-op "whole" torch path.
Under DDP every rank holds full plain replicas with all-reduced gradients: nothing changes.

Muon is the one update that is not a reduction of local pieces: Newton-Schulz needs the
full matrix. `gathered_update` gives each matrix one owner rank (balanced by Newton-Schulz
cost), gathers its shards there, runs the function once, and scatters the rows back (FSDP2);
under DDP (replicas) the owner computes and broadcasts. Optimizer state never moves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

try:  # torch.distributed can be built without DTensor (some platforms): then nothing is one.
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - torch builds without distributed
    DTensor = None  # type: ignore[assignment,misc]
    Replicate = None  # type: ignore[assignment,misc]
    Shard = None  # type: ignore[assignment,misc]


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


def owners(costs: Sequence[float], world: int) -> list[int]:
    """The rank (0..world-1) that computes each item: largest cost first, each to the rank
    with the least cost so far (ties: the lower rank; greedy longest-processing-time).
    Deterministic from the costs alone, so every rank derives the same assignment without
    communicating."""
    load = [0.0] * world
    out = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        out[i] = rank
        load[rank] += costs[i]
    return out


def ns_cost(shape: Sequence[int]) -> float:
    """Newton-Schulz's work on a tensor of `shape` as its (size(0), -1) matrix: ~rows*cols*
    min(rows, cols) per iteration (the Gram matrix is built on the short side)."""
    rows = shape[0] if shape else 1
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    return float(rows * cols * min(rows, cols))


def gathered_update(
    tensors: Sequence[torch.Tensor],
    fn: Callable[[torch.Tensor, int], torch.Tensor],
    *,
    replicated: bool = False,
    owners_at: Sequence[int | None] | None = None,
) -> list[torch.Tensor]:
    """fn(whole_tensor, index) for every tensor, each computed once, placed like the input.

    Work split: each tensor has one owner rank (`owners` by ns_cost, so the ranks get about
    equal Newton-Schulz work), and only the owner runs fn on it. Per kind of input:
      FSDP2 (a DTensor Shard(0) on a 1-D mesh): every rank sends its row shard to the owner
        (gather), the owner runs fn on the whole matrix and sends every rank its rows of the
        result back (scatter). Each matrix crosses the wire twice, as shards: 2(W-1)/W of its
        size in all, where all-gather + broadcast would move 2(W-1) times it.
      DDP replicas (plain tensors, `replicated=True`, a default process group of size > 1):
        the owner runs fn on its replica and broadcasts the result; every rank gets it.
      Plain tensors otherwise (one process, or not replicas): fn runs here on each.
      Other DTensors (replicated, sharded on another dim or on a 2-D mesh): all-gathered,
        then computed by the owner and broadcast (Shard(d != 0)), or by every rank.
    Collectives are issued in the same order on every rank and overlap (async); the owner's
    whole matrices exist only on it, one call's worth at once (bucket calls to bound that).
    `owners_at` (a position in each tensor's process group, from `plan_owners` over a whole
    step) replaces the assignment made within this call. Returns tensors placed like the
    inputs, in their dtype.
    """
    out: list[torch.Tensor | None] = [None] * len(tensors)
    rank, world = rank_and_world()
    plan = _owners_by_group(tensors, replicated, world, owners_at)
    gathers: list[tuple[int, Any, list[torch.Tensor] | None, Any]] = []
    for i, t in enumerate(tensors):
        kind, owner, group = plan[i]
        if kind == "local":
            out[i] = fn(t, i)
        elif kind == "every":
            out[i] = _placed_like(fn(t.full_tensor(), i).to(t.dtype), t)
        elif kind == "rows":
            piece = _padded_rows(t)
            bucket = [torch.empty_like(piece) for _ in dist.get_process_group_ranks(group)] \
                if rank == owner else None
            work = dist.gather(piece, bucket, dst=owner, group=group, async_op=True)
            gathers.append((i, work, bucket, group))
    whole: dict[int, torch.Tensor] = {}
    for i, work, bucket, _ in gathers:
        work.wait()
        if bucket is not None:
            whole[i] = torch.cat(bucket)[: tensors[i].size(0)]
    sends: list[tuple[int, Any, torch.Tensor]] = []
    for i, t in enumerate(tensors):
        kind, owner, group = plan[i]
        if kind == "rows":
            mine = torch.empty_like(_padded_rows(t))
            chunks = None
            if rank == owner:
                result = fn(whole.pop(i), i).to(t.dtype)
                chunks = list(_padded_rows_of(result, len(dist.get_process_group_ranks(group))))
            sends.append((i, dist.scatter(mine, chunks, src=owner, group=group,
                                          async_op=True), mine))
        elif kind in ("broadcast", "gathered"):
            source = t.full_tensor() if kind == "gathered" else t
            if rank == owner:
                result = fn(source, i).to(t.dtype).contiguous()
            else:
                result = torch.empty(source.shape, dtype=t.dtype, device=source.device)
            sends.append((i, dist.broadcast(result, src=owner, group=group, async_op=True),
                          result))
    for i, work, result in sends:
        work.wait()
        t = tensors[i]
        if plan[i][0] == "rows":
            rows = t.to_local().size(0)
            out[i] = DTensor.from_local(result[:rows], t.device_mesh, t.placements,
                                        run_check=False, shape=t.shape, stride=t.stride())
        elif plan[i][0] == "gathered":
            out[i] = _placed_like(result, t)
        else:
            out[i] = result
    return out  # type: ignore[return-value]


def _kind(t: torch.Tensor, replicated: bool, world: int) -> tuple[str, Any]:
    """(kind, process group) of one tensor for gathered_update: "local", "every" (gathered,
    computed everywhere), "rows" (gather/scatter of Shard(0) rows), "gathered" (all-gathered,
    owner computes, broadcast), "broadcast" (a DDP replica)."""
    if not is_dtensor(t):
        split = replicated and world > 1
        return ("broadcast", dist.group.WORLD) if split else ("local", None)
    if not is_sharded(t) or t.device_mesh.ndim != 1:
        return "every", None
    group = t.device_mesh.get_group()
    rows = (list(t.placements) == [Shard(0)]
            and t.to_local().size(0) == _row_counts(t.size(0), t.device_mesh.size())[
                t.device_mesh.get_local_rank()])
    return ("rows" if rows else "gathered"), group


def plan_owners(tensors: Sequence[torch.Tensor], replicated: Sequence[bool]) -> list[int | None]:
    """Each tensor's owner (a position in its process group's ranks; None where no owner is
    needed), balanced over all of them at once: `owners` per process group. Call it on the
    parameters of a whole step so param groups share one balance."""
    world = rank_and_world()[1]
    out: list[int | None] = [None] * len(tensors)
    by_group: dict[Any, list[int]] = {}
    for i, (t, rep) in enumerate(zip(tensors, replicated, strict=True)):
        kind, group = _kind(t, rep, world)
        if group is not None:
            by_group.setdefault(group, []).append(i)
    for group, idx in by_group.items():
        size = len(dist.get_process_group_ranks(group))
        for i, r in zip(idx, owners([ns_cost(tensors[i].shape) for i in idx], size), strict=True):
            out[i] = r
    return out


def _owners_by_group(
    tensors: Sequence[torch.Tensor], replicated: bool, world: int,
    owners_at: Sequence[int | None] | None,
) -> list[tuple[str, int, Any]]:
    """(kind, owner's global rank, process group) of each tensor (see _kind)."""
    kinds = [_kind(t, replicated, world) for t in tensors]
    out: list[tuple[str, int, Any]] = [(k, -1, g) for k, g in kinds]
    by_group: dict[Any, list[int]] = {}
    for i, (_, group) in enumerate(kinds):
        if group is not None:
            by_group.setdefault(group, []).append(i)
    for group, idx in by_group.items():
        ranks = dist.get_process_group_ranks(group)
        given = [owners_at[i] for i in idx] if owners_at is not None else [None]
        if any(r is None for r in given):
            given = owners([ns_cost(tensors[i].shape) for i in idx], len(ranks))
        for i, r in zip(idx, given, strict=True):
            out[i] = (kinds[i][0], ranks[r], group)
    return out


def _row_counts(rows: int, world: int) -> list[int]:
    """Rows of each rank's Shard(0) piece: torch.chunk's cut (ceil(rows/world) each, the last
    ones shorter or empty), which is how DTensor and FSDP2 shard."""
    size = -(-rows // world)
    return [max(0, min(size, rows - r * size)) for r in range(world)]


def _padded_rows(t: torch.Tensor) -> torch.Tensor:
    """This rank's Shard(0) rows, padded with zero rows to ceil(rows/world) (collectives
    need equal sizes)."""
    piece = t.to_local()
    size = -(-t.size(0) // t.device_mesh.size())
    if piece.size(0) == size:
        return piece.contiguous()
    pad = piece.new_zeros((size - piece.size(0), *piece.shape[1:]))
    return torch.cat([piece, pad])


def _padded_rows_of(whole: torch.Tensor, world: int) -> list[torch.Tensor]:
    """`whole` cut into `world` row pieces as Shard(0) cuts it, each padded like _padded_rows."""
    size = -(-whole.size(0) // world)
    out = []
    for r, count in enumerate(_row_counts(whole.size(0), world)):
        piece = whole[r * size: r * size + count]
        if count < size:
            piece = torch.cat([piece, whole.new_zeros((size - count, *whole.shape[1:]))])
        out.append(piece.contiguous())
    return out


def _placed_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The whole tensor (equal on every rank) as a DTensor placed like `like`: no
    communication, each rank slices its shard."""
    mesh = like.device_mesh
    replicated = DTensor.from_local(whole, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return replicated.redistribute(mesh, like.placements)
