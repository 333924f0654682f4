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
from wdlab.scaling.init import apply_init

__all__ = ["create_optimizer"]


def create_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    weight_decay: float | None = None,
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
    optimizer. An unknown `name` fails before the model is probed, with a did-you-mean;
    aliases (adam, sgd, Hugging Face's adamw_torch, ...: wdlab.optim.ALIASES) are accepted.

    weight_decay omitted (None) means the optimizer class's own default, so that
    create_optimizer(model, "adamw", lr=...) decays like torch.optim.AdamW(..., lr=...)
    does (0.01) — but only the parameters the grouping decays (matrices and embeddings;
    never norm gains or biases). Pass weight_decay=0.0 to decay nothing. With `scaling` (a
    wdlab.scaling rule; lr and weight_decay tuned at `base_width`), the model is first
    re-initialized in place by wdlab.scaling.apply_init (init, readout and attention
    multipliers), then grouped with per-role lr and weight decay for `width`
    (default: model.width).
    """
    name, hparams = optim.resolve(name, hparams)  # fail fast, before any probing
    if weight_decay is None:
        default = optim.hyperparameters(name).get("weight_decay", 0.0)
        weight_decay = float(default) if isinstance(default, (int, float)) else 0.0
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
    opt = optim.create(name, groups, lr=lr, weight_decay=weight_decay, **hparams)
    # Groups are named (torch's param_names), and torch refuses an unnamed group next to
    # named ones: name the groups users add later.
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    opt.add_param_group = _NamedGroupAdder(opt, names)
    return opt


class _NamedGroupAdder:
    """torch's add_param_group, with `param_names` filled in when the caller gives none (the
    parameter's name in the model, frozen ones included, else "added.<group>.<i>"), and
    `role` (matrix for >= 2-D, else vector) and `scale_invariant` (False) defaulted."""

    def __init__(self, opt: torch.optim.Optimizer, names: dict[int, str]) -> None:
        self.opt, self.names = opt, names

    def __call__(self, param_group: dict[str, Any]) -> None:
        _add_named_group(self.opt, self.names, param_group)


def _add_named_group(
    opt: torch.optim.Optimizer, names: dict[int, str], param_group: dict[str, Any]
) -> None:
    group = dict(param_group)
    params = group.get("params")
    if isinstance(params, torch.Tensor):
        params = [params]
    elif params is not None and not isinstance(params, (set, dict)):
        params = list(params)  # a generator is read once; torch rejects sets itself
    group["params"] = params
    named = bool(opt.param_groups) and "param_names" in opt.param_groups[0]
    if named and "param_names" not in group and isinstance(params, list):
        index = len(opt.param_groups)
        group["param_names"] = [
            names.get(id(p), f"added.{index}.{i}") for i, p in enumerate(params)
        ]
    if isinstance(params, list) and params and all(isinstance(p, torch.Tensor) for p in params):
        group.setdefault("role", "matrix" if all(p.ndim >= 2 for p in params) else "vector")
        group.setdefault("scale_invariant", False)
    type(opt).add_param_group(opt, group)
