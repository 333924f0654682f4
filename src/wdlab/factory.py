"""One call from a model to a ready optimizer: wdlab's grouping, then the registry.

Kept apart from groups.py so that grouping works with any torch optimizer and the
optimizer registry stays free of model knowledge (DESIGN.md: groups -> optimizer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from wdlab import optim
from wdlab.groups import classify, param_groups
from wdlab.scaling import apply_init

__all__ = ["create_optimizer"]


def create_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    weight_decay: float = 0.0,
    example_input: Any = None,
    decay_embedding: bool = True,
    decay_output: bool = True,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    probe: bool = True,
    scaling: str | None = None,
    base_width: int | None = None,
    width: int | None = None,
    **hparams: Any,
) -> torch.optim.Optimizer:
    """wdlab.optim optimizer `name` over wdlab.param_groups(model, ...).

    Extra keyword arguments (betas, momentum, decay="independent", ...) go to the
    optimizer. An unknown `name` fails before the model is probed. With `scaling` (a
    wdlab.scaling rule; lr and weight_decay tuned at `base_width`), the model is first
    re-initialized in place by wdlab.scaling.apply_init (init, readout and attention
    multipliers), then grouped with per-role lr and weight decay for `width`
    (default: model.width).
    """
    optim.get(name)  # fail fast with the list of known names, before any probing
    infos = None
    if scaling is not None:  # classify once, before and after the init: names do not change
        infos = classify(
            model,
            example_input,
            decay_embedding=decay_embedding,
            decay_output=decay_output,
            probe=probe,
        )
        apply_init(model, scaling, base_width, width, example_input=example_input, infos=infos)
    groups = param_groups(
        model,
        lr,
        weight_decay,
        example_input=example_input,
        decay_embedding=decay_embedding,
        decay_output=decay_output,
        overrides=overrides,
        infos=infos,
        probe=probe,
        scaling=scaling,
        base_width=base_width,
        width=width,
        decay_mode=hparams.get("decay", "decoupled"),
    )
    return optim.create(name, groups, lr=lr, weight_decay=weight_decay, **hparams)
