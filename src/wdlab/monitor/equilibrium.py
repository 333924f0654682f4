"""Moved to wdlab.optim.equilibrium; this module re-exports it so older imports keep working."""

from wdlab.optim.equilibrium import (
    DECAYS,
    KINDS,
    Hyper,
    decay_per_step,
    hyper_for,
    predict,
    predicted_angle,
    predicted_grad_ratio,
    predicted_norm,
)

__all__ = [
    "DECAYS",
    "KINDS",
    "Hyper",
    "decay_per_step",
    "hyper_for",
    "predict",
    "predicted_grad_ratio",
    "predicted_angle",
    "predicted_norm",
]
