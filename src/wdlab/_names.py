"""Names shared across rooms, torch-free so that config validation and the CLI can import
them without loading torch (DESIGN.md "Layout, wave 2")."""

from __future__ import annotations

ROLES = ("matrix", "embedding", "output", "vector", "bias")
"""What a parameter does (wdlab.groups): decides its decay and its width scaling."""

RULES = ("sp", "mup", "mup-wd", "fan", "timescale", "sp-lr", "sp-lr-all")
"""Width-scaling rules (wdlab.scaling)."""

INIT_RULES = ("mup", "mup-wd", "fan", "timescale")
"""Rules that change init, the readout multiplier and the attention scale (apply_init)."""

SCALE_ROLES = ("matrix", "input", "embedding", "output", "vector", "bias", "attention")
"""Roles a rule scales: classify's roles plus "input" (a matrix applied to the raw input:
its fan_in does not grow with width, so μP treats it like an embedding) and "attention"
(the logit multiplier; no parameter)."""

DECAY_MODES = ("decoupled", "independent", "l2", "corrected")
"""How an optimizer applies weight decay (REFERENCE.md: decoupled, independent, L2; corrected is
Defazio et al. 2025's AdamC rule, docs/optimizers.md)."""

DECAY_TARGETS = ("zero", "init", "ema", "one")
"""What weight decay pulls a weight toward (wdlab.optim.base, docs/optimizers.md): 0 (classic),
the weights at the optimizer's first step, an EMA of the weights, or 1 (norm gains)."""

SP_INITS = ("constant", "fan_in")
"""How a standard-parametrized model's own init depends on width (wdlab.scaling)."""

SCHEDULE_KINDS = ("constant", "linear", "cosine", "power", "wsd")
"""Schedule shapes (wdlab.schedules): for the lr (schedule.kind) and the weight decay
(schedule.wd.kind)."""

COOLDOWN_SHAPES = ("linear", "cosine", "sqrt", "power")
"""The cooldown of a warmup-stable-decay ("wsd") schedule (wdlab.schedules)."""
