"""The CPU-sized charlm the transformer claims share, and helpers over its monitor series."""

from __future__ import annotations

import math

from wdlab.claims.base import ClaimData, Trial

# 2 layers, width 64, context 32: ~20x cheaper per step than the workload's default.
SMALL = ("model.n_layer=2", "model.n_head=2", "model.d_model=64", "model.context=32",
         "data.eval_windows=128")  # fmt: skip


def series_max(data: ClaimData, trial: Trial, prefix: str) -> float:
    """Largest finite value over every series whose name starts with `prefix` (NaN if none)."""
    best = -math.inf
    for name in data.names(trial, prefix):
        for _, v in data.series(trial, name):
            if math.isfinite(v):
                best = max(best, v)
    return best if math.isfinite(best) else math.nan


def first_loss(data: ClaimData, trial: Trial) -> float:
    series = data.series(trial, "train_loss")
    return float(series[0][1]) if series else math.nan
