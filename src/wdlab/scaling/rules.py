"""Width-scaling rules: how learning rate, weight decay, init and multipliers follow width.

A rule turns hyperparameters tuned at `base_width` into per-role settings at `width`
(REFERENCE.md §1, §4; docs/scaling.md). With m = width / base_width:

- ``sp``: nothing changes (standard parametrization: reuse the tuned values as they are).
- ``mup``: μP for Adam-type optimizers (Tensor Programs V): hidden matrices lr/m and init
  std ∝ 1/sqrt(fan_in); input-like weights, embeddings, vectors and biases keep lr; the
  readout is multiplied by 1/m in the forward pass (so its effective init variance is
  ∝ 1/fan_in² and its effective update ∝ 1/m); attention logits use 1/d_head, anchored so
  that base width is unchanged. Weight decay λ is left alone, so η·λ of matrices falls as 1/m.
- ``mup-wd``: mup, and λ·m for matrices, keeping η·λ fixed (mup's MuAdamW convention).
- ``fan``: mup, and λ·sqrt(m) for matrices (Fan et al. 2025: η ∝ 1/d, λ ∝ sqrt(d)); every
  vector-like parameter (embedding, readout, vector, bias, input weights) gets λ = 0.
- ``timescale``: mup, and λ chosen so that τ_epoch = B/(η·λ·N) stays fixed (Wang & Aitchison)
  when width, batch size B or dataset size N change.
- ``sp-lr``: the standard parametrization (init, readout and attention as the model has
  them) with per-role Adam learning rates: hidden matrices and the readout lr/m, embeddings,
  vectors and biases keep lr; λ untouched. Everett et al. 2024 ("Scaling Exponents Across
  Parameterizations and Optimizers") found such per-layer rates transfer in SP about as well
  as full μP; measured in docs/scaling.md.
- ``sp-lr-all``: the standard parametrization with every parameter's lr/m (one global rate
  ∝ 1/width, the common practice for Adam in SP); λ untouched. On charlm the SP optimum
  moved as 1/m and the embeddings' constant rate was what cost `sp-lr` (docs/scaling.md).

The rules keep the per-step shrink factor (η·λ for decoupled decay) as their invariant, so
they also apply to decay="independent" (shrink λ·schedule): there λ scales by the shrink
ratio alone. Everything equals the base setting at width == base_width, except `fan`'s
λ = 0 for vector-like parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from wdlab._names import DECAY_MODES, INIT_RULES, RULES, SCALE_ROLES, SP_INITS

__all__ = [
    "RULES",
    "INIT_RULES",
    "SCALE_ROLES",
    "DECAY_MODES",
    "SP_INITS",
    "RoleScale",
    "check_scaling",
    "role_scales",
    "transfer_table",
]


@dataclass(frozen=True)
class RoleScale:
    """Multipliers for one role relative to the base-width setting.

    lr_mult, wd_mult: on the learning rate and weight decay; init_std_mult: on the init std
    relative to the model's own init; forward_mult: on the role's output in the forward pass
    (the readout, or the attention logits relative to 1/sqrt(d_head)).
    """

    lr_mult: float = 1.0
    wd_mult: float = 1.0
    init_std_mult: float = 1.0
    forward_mult: float = 1.0


def _positive(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{field} must be a number > 0, got {value!r}")
    return float(value)


def check_scaling(rule: Any, base_width: Any, width: Any) -> float:
    """Validate a rule and its widths; returns the width multiplier m = width / base_width."""
    if rule not in RULES:
        raise ValueError(f"scaling must be one of {', '.join(RULES)}, got {rule!r}")
    for field, value in (("base_width", base_width), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{field} must be a positive integer (the model's width), got {value!r}"
            )
    return width / base_width


def role_scales(
    rule: str,
    width_mult: float,
    *,
    decay_mode: str = "decoupled",
    batch_mult: float = 1.0,
    data_mult: float = 1.0,
    sp_init: str = "constant",
) -> dict[str, RoleScale]:
    """Multipliers per role (SCALE_ROLES) for `rule` at width_mult = width / base_width.

    batch_mult, data_mult: new/old batch size and dataset size; only `timescale` uses them.
    sp_init: how the model's own init depends on width ("constant": same std at every width,
    as nanoGPT / wdlab's GPT; "fan_in": std ∝ 1/sqrt(fan_in) already, torch's nn.Linear).
    """
    if rule not in RULES:
        raise ValueError(f"scaling must be one of {', '.join(RULES)}, got {rule!r}")
    m = _positive("width_mult", width_mult)
    batch_mult = _positive("batch_mult", batch_mult)
    data_mult = _positive("data_mult", data_mult)
    if decay_mode not in DECAY_MODES:
        raise ValueError(f"decay_mode must be one of {', '.join(DECAY_MODES)}, got {decay_mode!r}")
    if sp_init not in SP_INITS:
        raise ValueError(f"sp_init must be one of {', '.join(SP_INITS)}, got {sp_init!r}")
    if rule != "timescale" and (batch_mult != 1.0 or data_mult != 1.0):
        raise ValueError(
            f"scaling {rule!r} transfers across width only; use scaling='timescale' to change "
            "batch size or dataset size"
        )
    if rule == "sp":
        return {role: RoleScale() for role in SCALE_ROLES}
    if rule == "sp-lr":  # SP's init and forward pass; Adam's per-role rates only
        per_width = RoleScale(lr_mult=1.0 / m, wd_mult=1.0)
        return {role: per_width if role in ("matrix", "output") else RoleScale()
                for role in SCALE_ROLES}
    if rule == "sp-lr-all":  # SP's init and forward pass; one global rate lr/m
        return {role: RoleScale(lr_mult=1.0 / m) if role != "attention" else RoleScale()
                for role in SCALE_ROLES}

    # μP part, shared by every rule but sp.
    lr = {role: 1.0 for role in SCALE_ROLES}
    lr["matrix"] = 1.0 / m
    init = {role: 1.0 for role in SCALE_ROLES}
    init["matrix"] = 1.0 / math.sqrt(m) if sp_init == "constant" else 1.0
    forward = {role: 1.0 for role in SCALE_ROLES}
    forward["output"] = 1.0 / m
    forward["attention"] = 1.0 / math.sqrt(m)  # 1/d_head anchored at base, d_head ∝ width

    # Weight-decay part: the shrink-per-step ratio (η'λ')/(ηλ) each rule asks for.
    shrink: dict[str, float | None] = {}
    for role in SCALE_ROLES:
        if rule == "mup":
            shrink[role] = None  # λ untouched
        elif rule == "mup-wd":
            shrink[role] = 1.0
        elif rule == "fan":
            shrink[role] = lr[role] * math.sqrt(m) if role == "matrix" else 0.0
        else:  # timescale: τ_epoch = B / (η λ N) fixed  ->  ηλ ∝ B / N
            shrink[role] = batch_mult / data_mult
    scales = {}
    for role in SCALE_ROLES:
        s = shrink[role]
        if s is None:
            wd = 1.0
        elif decay_mode == "independent":  # shrink per step is λ·schedule: no η in it
            wd = s
        else:
            wd = s / lr[role]
        scales[role] = RoleScale(lr[role], wd, init[role], forward[role])
    return scales


def transfer_table(
    rule: str,
    from_width: int,
    to_width: int,
    lr: float,
    wd: float,
    *,
    decay_mode: str = "decoupled",
    from_batch: int | None = None,
    to_batch: int | None = None,
    from_data: int | None = None,
    to_data: int | None = None,
    sp_init: str = "constant",
) -> list[dict[str, Any]]:
    """Per-role settings at `to_width` for (lr, wd) tuned at `from_width` (what `wdlab
    transfer` prints). One dict per SCALE_ROLES entry: role, lr, weight_decay,
    init_std_mult, forward_mult, lr_mult, wd_mult. weight_decay is what the role gets if it
    decays (vectors and biases do not by default); the attention row has lr and
    weight_decay None. Batch sizes and dataset sizes are optional pairs (timescale only).
    """
    m = check_scaling(rule, from_width, to_width)
    lr = _positive("lr", lr)
    if isinstance(wd, bool) or not isinstance(wd, (int, float)) or wd < 0:
        raise ValueError(f"wd must be a number >= 0, got {wd!r}")
    mults = []
    for name, old, new in (("batch", from_batch, to_batch), ("data", from_data, to_data)):
        if (old is None) != (new is None):
            raise ValueError(f"from_{name} and to_{name} go together; pass both or neither")
        if old is None:
            mults.append(1.0)
        else:
            mults.append(_positive(f"to_{name}", new) / _positive(f"from_{name}", old))
    scales = role_scales(
        rule, m, decay_mode=decay_mode, batch_mult=mults[0], data_mult=mults[1], sp_init=sp_init
    )
    rows = []
    for role, s in scales.items():
        param = role != "attention"
        rows.append(
            {
                "role": role,
                "lr": lr * s.lr_mult if param else None,
                "weight_decay": float(wd) * s.wd_mult if param else None,
                "init_std_mult": s.init_std_mult,
                "forward_mult": s.forward_mult,
                "lr_mult": s.lr_mult if param else None,
                "wd_mult": s.wd_mult if param else None,
            }
        )
    return rows
