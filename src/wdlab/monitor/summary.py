"""The "summary" monitor level: a few dozen aggregates instead of one metric per tensor.

Hosted loggers (W&B, MLflow) draw a chart per metric name, and the "light" level of a
12-layer GPT gives 573 names per measured step. "summary" keeps the same measurements and
reports only:

  mon/<probe>/role:<role>        mean over the tensors of that role (as in "light")
  mon/<probe>/role_max:<role>    largest value over those tensors
      roles: matrix | embedding | output | vector | bias, and si (all scale-invariant ones);
      probes: every per-tensor probe of "light" (w_norm, grad_norm, upd_norm, upd_ratio,
      angle, eff_lr, angle_pred, angle_ratio, norm_pred, norm_ratio, lion_bound)
  mon/attn_entropy/layers:mean, mon/attn_entropy/layers:max        over attention layers
  mon/attn_max_logit/layers:mean, mon/attn_max_logit/layers:max
  mon/logz_mean, mon/logz_max, mon/logit_max                        unchanged

(role_max, not role:<role>/max: a name is never another name's folder, which MLflow's
file store needs.) No per-tensor and no per-layer names, so the count depends on which
roles and probes the model has, not on its depth: 37 for a 12-layer pre-norm wdlab GPT
under AdamW (where "light" gives 573; no tensor there is scale-invariant), at most
6 roles x 11 probes x 2 + 4 + 3 = 139 for any model.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping

PASS_THROUGH = ("mon/logz_mean", "mon/logz_max", "mon/logit_max")
_LAYER_KEY = re.compile(r"^mon/(attn_entropy|attn_max_logit)/layer:\d+$")


def aggregate(
    metrics: Mapping[str, float], tensors: Iterable[tuple[str, str, bool, str]]
) -> dict[str, float]:
    """The summary metrics from a "light" measurement.

    `tensors` lists (parameter name, role, scale_invariant, probe) for every per-tensor value
    in `metrics` (keyed mon/<probe>/<name>); non-finite values are left out of the aggregates.
    """
    groups: dict[str, list[float]] = defaultdict(list)
    for name, role, scale_invariant, probe in tensors:
        value = metrics.get(f"mon/{probe}/{name}")
        if value is None or not math.isfinite(value):
            continue
        groups[f"mon/{probe}/role:{role}"].append(value)
        if scale_invariant:
            groups[f"mon/{probe}/role:si"].append(value)
    out: dict[str, float] = {}
    for key, values in groups.items():
        out[key] = sum(values) / len(values)
        out[key.replace("/role:", "/role_max:")] = max(values)
    layers: dict[str, list[float]] = defaultdict(list)
    for key, value in metrics.items():
        match = _LAYER_KEY.match(key)
        if match and math.isfinite(value):
            layers[match.group(1)].append(value)
    for probe, values in layers.items():
        out[f"mon/{probe}/layers:mean"] = sum(values) / len(values)
        out[f"mon/{probe}/layers:max"] = max(values)
    for key in PASS_THROUGH:
        if key in metrics:
            out[key] = metrics[key]
    return out
