"""QK-Clip (Kimi K2's MuonClip): keep attention logits below tau by rescaling W_q and W_k.

Kimi Team 2025, "Kimi K2: Open Agentic Intelligence" (arXiv 2507.20534), section 2.1: after
each optimizer step, for every head h whose largest pre-softmax logit of the step
S_max^h = max_ij q_i^h . k_j^h * scale exceeded tau, the head's query and key projections are
scaled by gamma_h = tau / S_max^h each to the power 1/2:
    W_q^h <- sqrt(gamma_h) W_q^h,   W_k^h <- sqrt(gamma_h) W_k^h   (and their biases)
so that the same input gives logits scaled by exactly gamma_h: the head's max becomes tau,
heads below tau are left alone. The paper pairs it with Muon (whose updates can grow logits
unboundedly); here it works with any optimizer, on wdlab's GPT (separate q/k/v projections,
head h = rows h*d_head:(h+1)*d_head), no qk-norm (which already bounds the logits).

Use: GPTConfig(qk_clip=tau) (recipe: `--set model.qk_clip=100`) makes every training forward
record the per-head max (CausalSelfAttention.max_logit_seen, a running max over micro-batches);
`apply_qk_clip(model)` after `optimizer.step()` clips and resets it (wdlab's training loop calls
it). Under DDP/FSDP2 the maxima are all-reduced (MAX) first, so every rank rescales alike.
The step's readout stays on each attention module as `qk_clip_stats` ({"max_logit": [n_head]
before clipping, "clipped": number of heads rescaled}) for the Monitor.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

try:  # torch.distributed can be built without DTensor: then no parameter is one
    from torch.distributed.tensor import DTensor, Replicate
except ImportError:  # pragma: no cover
    DTensor = None  # type: ignore[assignment,misc]

__all__ = ["apply_qk_clip", "clipped_modules"]


def clipped_modules(model: nn.Module) -> list[Any]:
    """The attention modules of `model` with QK-Clip on (qk_clip > 0), in module order."""
    return [m for m in model.modules() if float(getattr(m, "qk_clip", 0.0) or 0.0) > 0
            and hasattr(m, "max_logit_seen")]


@torch.no_grad()
def apply_qk_clip(model: nn.Module | list[Any]) -> int:
    """Rescale W_q, W_k of every head whose recorded max logit exceeded its module's tau.

    Returns the number of heads clipped (all layers). Modules that saw no training forward
    since the last call are skipped. Takes the model or `clipped_modules(model)` (cheaper to
    keep when called every step).
    """
    modules = clipped_modules(model) if isinstance(model, nn.Module) else model
    seen = [m for m in modules if m.max_logit_seen is not None]
    if not seen:
        return 0
    maxima = torch.stack([m.max_logit_seen.float() for m in seen])  # [layers, heads]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # data-parallel ranks saw different batches: all take the largest
        dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
    clipped = 0
    for m, top in zip(seen, maxima, strict=True):
        gamma = (m.qk_clip / top.clamp(min=1e-30)).clamp(max=1.0)  # 1 where top <= tau
        over = int((top > m.qk_clip).sum())
        m.qk_clip_stats = {"max_logit": top.clone(), "clipped": torch.tensor(float(over))}
        m.max_logit_seen = None
        if not over:
            continue
        clipped += over
        rows = gamma.sqrt().repeat_interleave(m.d_head)  # one factor per output row
        for proj in (m.q_proj, m.k_proj):
            _scale_rows(proj.weight, rows)
            if proj.bias is not None:
                _scale_rows(proj.bias, rows)
    return clipped


def _scale_rows(t: torch.Tensor, rows: torch.Tensor) -> None:
    """t[i, ...] *= rows[i], in place; a sharded (FSDP2) t scales its own rows."""
    factor = rows.to(dtype=t.dtype, device=t.device).reshape(-1, *([1] * (t.ndim - 1)))
    if DTensor is not None and isinstance(t, DTensor):
        mesh = t.device_mesh
        factor = DTensor.from_local(factor, mesh, [Replicate()] * mesh.ndim, run_check=False)
    t.mul_(factor)
