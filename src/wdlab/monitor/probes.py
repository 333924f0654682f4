"""The probes: each reads a few tensors and returns scalars, as 0-dim tensors where possible.

Tensor-returning probes never call .item(): the Monitor stacks the results of all
parameters and converts once per measured step, so probing costs one host sync.
The evaluation-time probes (rankme, expected_calibration_error, loss_by_frequency_bucket)
return Python floats; workloads call them once per evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from wdlab.optim.distributed import full, replicate_as

# ---- per parameter tensor (every measured step) ----------------------------------------------


def update_split(w_prev: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(radial, tangential) parts of the update `delta` relative to `w_prev`.

    radial = ⟨delta, ŵ⟩ is signed (negative: the step shrank the norm, as decay does);
    tangential = ‖delta − ŵ·radial‖ is what rotates the tensor.
    """
    w = w_prev.float()
    d = delta.float()
    norm = torch.linalg.vector_norm(w).clamp_min(1e-30)
    # Sums over every dim, not a flattened dot: a sharded DTensor (FSDP2) reduces them across
    # its shards, and one sharded unevenly cannot be flattened.
    radial = (d * w).sum() / norm
    tangential = torch.linalg.vector_norm(d - w * (radial / norm))
    return radial, tangential


def angular_update(w_prev: torch.Tensor, w_new: torch.Tensor) -> torch.Tensor:
    """Angle between w_prev and w_new in radians (REFERENCE §2), computed from the update.

    arccos of the cosine loses half the digits for the small angles of interest
    (θ ≈ 1e-2 leaves 1 − cos ≈ 5e-5); atan2 of the tangential part over the radial
    extent keeps them.
    """
    radial, tangential = update_split(w_prev, w_new - w_prev)
    along = torch.linalg.vector_norm(w_prev.float()) + radial
    return torch.atan2(tangential, along)


def row_angular_update(w_prev: torch.Tensor, w_new: torch.Tensor) -> torch.Tensor:
    """Mean over rows (neurons: w.view(out, -1)) of each row's angular update."""
    p = w_prev.reshape(w_prev.shape[0], -1).float()
    d = (w_new.reshape(w_new.shape[0], -1).float()) - p
    norm = torch.linalg.vector_norm(p, dim=1).clamp_min(1e-30)
    radial = (d * p).sum(dim=1) / norm
    tangential = torch.linalg.vector_norm(d - p * (radial / norm).unsqueeze(1), dim=1)
    return torch.atan2(tangential, norm + radial).mean()


def effective_lr(lr: float, w: torch.Tensor) -> torch.Tensor:
    """η / ‖w‖²: the learning rate a scale-invariant weight effectively sees (REFERENCE §2)."""
    return lr / torch.linalg.vector_norm(w.float()).square().clamp_min(1e-30)


def power_iteration(
    w: torch.Tensor, v: torch.Tensor | None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of power iteration on w.view(out, -1): (σ_max estimate, next right vector).

    Called once per measured step with the vector it returned last time, so the cost is
    two matrix-vector products and the estimate converges over steps (amortized).
    """
    m = w.reshape(w.shape[0], -1).float()
    if v is None:
        v = torch.randn(m.shape[1], generator=generator, device="cpu").to(m.device)
    # A sharded m (FSDP2): v is replicated on its mesh, m^T u is all-reduced into a plain v.
    u = m @ replicate_as(v, m)
    v = full(m.T @ u)
    v = v / torch.linalg.vector_norm(v).clamp_min(1e-30)
    return torch.linalg.vector_norm(m @ replicate_as(v, m)), v


# ---- per model (measured training steps) ------------------------------------------------------


def attention_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Per-head entropy −Σ_j A_ij log A_ij, averaged over queries and batch (REFERENCE §5).

    `weights` has shape (..., heads, queries, keys), rows summing to 1; masked entries are 0
    and contribute 0. Returns a tensor of shape (heads,).
    """
    if weights.dim() < 3:
        raise ValueError(
            "attention weights must have shape (..., heads, queries, keys); "
            f"got {tuple(weights.shape)}"
        )
    ent = torch.special.entr(weights.float()).sum(dim=-1)  # (..., heads, queries)
    return ent.reshape(-1, weights.shape[-3], weights.shape[-2]).mean(dim=(0, 2))


def logit_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean log Z, max log Z, max logit) of output logits over the last dim (REFERENCE §5).

    log Z = logsumexp(logits); its drift away from 0 is what z-loss penalizes.
    """
    z = logits.detach().float()
    logz = torch.logsumexp(z, dim=-1)
    return logz.mean(), logz.max(), z.max()


# ---- at evaluation ----------------------------------------------------------------------------


def rankme(matrix: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (REFERENCE §6): exp of the entropy of the normalized singular values.

    p_k = σ_k/‖σ‖₁ + ε; the result lies between 1 and min(n, d) and counts the
    directions the representation actually uses.
    """
    if matrix.dim() != 2:
        raise ValueError(
            f"rankme needs a 2-D matrix (samples, features); got shape {tuple(matrix.shape)}"
        )
    s = torch.linalg.svdvals(matrix.detach().double())
    p = s / s.sum().clamp_min(1e-300) + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def expected_calibration_error(
    probs_or_logits: torch.Tensor,
    labels: torch.Tensor,
    bins: int = 15,
    *,
    from_logits: bool | None = None,
) -> float:
    """ECE with `bins` equal-width confidence bins (REFERENCE §6, Guo et al.).

    ECE = Σ_b (|B_b|/n)·|acc(B_b) − conf(B_b)|, bin b = (b/bins, (b+1)/bins]. Inputs are
    (n, classes); they are treated as logits unless every row is a probability vector
    (override with from_logits).
    """
    if bins < 1:
        raise ValueError(f"bins must be a positive integer; got {bins!r}")
    x = probs_or_logits.detach().double()
    if x.dim() != 2 or labels.shape != x.shape[:1]:
        raise ValueError(
            "expected_calibration_error needs probs_or_logits (n, classes) and labels (n,); "
            f"got {tuple(x.shape)} and {tuple(labels.shape)}"
        )
    if from_logits is None:
        from_logits = not (
            bool((x >= 0).all()) and torch.allclose(x.sum(1), torch.ones_like(x[:, 0]), atol=1e-4)
        )
    probs = torch.softmax(x, dim=1) if from_logits else x
    conf, pred = probs.max(dim=1)
    correct = (pred == labels.to(pred.device)).double()
    idx = (torch.ceil(conf * bins) - 1).clamp(0, bins - 1).long()
    n = conf.numel()
    acc = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, correct)
    cs = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, conf)
    return float((acc - cs).abs().sum() / n)


def loss_by_frequency_bucket(
    logits: torch.Tensor,
    targets: torch.Tensor,
    token_counts: torch.Tensor | Sequence[int],
    buckets: int | Sequence[float] = 4,
) -> dict[str, float]:
    """Mean cross-entropy per token-frequency bucket ("The Fair Language Model Paradox").

    `token_counts[v]` is how often token v occurs in the training data. With
    `buckets=k` the vocabulary is sorted by count and cut into k groups holding equal
    shares of the training tokens; "freq0" is the most frequent group. With a sequence
    of count thresholds [t1 > t2 > ...], "freq0" holds tokens with count ≥ t1, "freq1"
    those in [t2, t1), ..., the last those below the smallest threshold. Buckets no
    target falls into are left out.
    """
    counts = torch.as_tensor(token_counts, dtype=torch.float64).reshape(-1)
    vocab = logits.shape[-1]
    if counts.numel() != vocab:
        raise ValueError(
            f"token_counts must have one entry per vocabulary item ({vocab}); got {counts.numel()}"
        )
    if isinstance(buckets, int):
        if buckets < 1:
            raise ValueError(
                f"buckets must be a positive integer or a list of counts; got {buckets}"
            )
        order = torch.argsort(counts, descending=True, stable=True)
        share = torch.cumsum(counts[order], 0) / counts.sum().clamp_min(1e-300)
        # the bucket of a token is how many equal shares precede its first token
        start = share - counts[order] / counts.sum().clamp_min(1e-300)
        ranked = torch.clamp((start * buckets).floor().long(), 0, buckets - 1)
        bucket_of = torch.empty(vocab, dtype=torch.long)
        bucket_of[order] = ranked
        n_buckets = buckets
    else:
        edges = sorted((float(t) for t in buckets), reverse=True)
        bucket_of = torch.full((vocab,), len(edges), dtype=torch.long)
        for i in reversed(range(len(edges))):
            bucket_of[counts >= edges[i]] = i
        n_buckets = len(edges) + 1
    flat_logits = logits.detach().reshape(-1, vocab).float()
    flat_targets = targets.reshape(-1).long()
    loss = F.cross_entropy(flat_logits, flat_targets, reduction="none").double().cpu()
    b = bucket_of[flat_targets.cpu()]
    total = torch.zeros(n_buckets, dtype=torch.float64).index_add_(0, b, loss)
    count = torch.zeros(n_buckets, dtype=torch.float64).index_add_(0, b, torch.ones_like(loss))
    return {f"freq{i}": float(total[i] / count[i]) for i in range(n_buckets) if count[i] > 0}
