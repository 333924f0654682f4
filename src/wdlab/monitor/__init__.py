"""Live diagnostics of the training dynamics: Monitor, probes and equilibrium predictions.

See wdlab.monitor.monitor for the metric naming scheme and docs/monitor.md for what each
probe means.
"""

from __future__ import annotations

from wdlab.monitor.equilibrium import predicted_angle, predicted_norm
from wdlab.monitor.monitor import LEVELS, Monitor
from wdlab.monitor.probes import (
    angular_update,
    attention_entropy,
    effective_lr,
    expected_calibration_error,
    logit_stats,
    loss_by_frequency_bucket,
    rankme,
    update_split,
)

__all__ = [
    "LEVELS",
    "Monitor",
    "angular_update",
    "attention_entropy",
    "effective_lr",
    "expected_calibration_error",
    "logit_stats",
    "loss_by_frequency_bucket",
    "predicted_angle",
    "predicted_norm",
    "rankme",
    "update_split",
]
