"""Width-scaling init: make a model built by its own init follow a rule's init and
multipliers (readout 1/m, attention 1/d_head, hidden matrices 1/sqrt(m)).

Kept apart from rules.py because it needs the model's roles (wdlab.groups), while
groups.py needs the rules' arithmetic: rules <- groups <- init, no circle.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from wdlab.groups import ParamInfo, _unwrap, classify, input_weights
from wdlab.nn.layers import MuReadout
from wdlab.scaling.rules import INIT_RULES, check_scaling, role_scales

__all__ = ["apply_init", "default_sp_init"]


def default_sp_init(model: nn.Module) -> str:
    """"constant" for wdlab's GPT (nanoGPT's N(0, 0.02) at every width), else "fan_in"
    (torch's default Linear/Conv init, already ∝ 1/sqrt(fan_in))."""
    from wdlab.nn.transformer import GPT

    return "constant" if isinstance(model, GPT) else "fan_in"


def _readout_modules(model: nn.Module, infos: list[ParamInfo]) -> list[tuple[str, nn.Module]]:
    """(name, module) of every readout: owners of output-role weights, and the Linear that
    shares a tied embedding (the tied weight is classified "embedding")."""
    found: dict[str, nn.Module] = {}
    for info in infos:
        names = (info.name, *info.tied_to) if info.role in ("output", "embedding") else ()
        for name in names:
            path, _, local = name.rpartition(".")
            if local != "weight":
                continue
            module = model.get_submodule(path)
            if isinstance(module, nn.Linear) and (info.role == "output" or name != info.name):
                found[path] = module
    return list(found.items())


def _swap_readout(model: nn.Module, path: str, module: nn.Linear, width_mult: float) -> None:
    """Replace a plain Linear readout by a MuReadout sharing its parameters (ties kept)."""
    if isinstance(module, MuReadout):
        module.width_mult = float(width_mult)
        return
    if not path:
        raise ValueError("apply_init cannot swap the readout when the model is the readout itself")
    if type(module) is not nn.Linear:
        raise ValueError(
            f"the readout {path!r} is a {type(module).__name__}; apply_init can only turn a plain "
            "nn.Linear into wdlab.nn.MuReadout; build the model with MuReadout instead"
        )
    new = MuReadout(
        module.in_features, module.out_features, bias=module.bias is not None,
        width_mult=width_mult, device="meta",
    )
    new.weight = module.weight
    if module.bias is not None:
        new.bias = module.bias
    new.train(module.training)
    parent_path, _, local = path.rpartition(".")
    setattr(model.get_submodule(parent_path), local, new)


@torch.no_grad()
def apply_init(
    model: nn.Module,
    rule: str,
    base_width: int,
    width: int | None = None,
    *,
    example_input: Any = None,
    sp_init: str | None = None,
    infos: list[ParamInfo] | None = None,
) -> nn.Module:
    """Make `model` (built by its own, standard init) follow `rule`'s init and multipliers.

    For every rule but sp: hidden matrices are rescaled by init_std_mult (1/sqrt(m) when the
    model's own init has a width-independent std, see default_sp_init); every plain
    nn.Linear readout becomes a MuReadout sharing its weight with multiplier 1/m; every
    attention module with `scale` and `d_head` gets scale 1/sqrt(d_head · m). A model is
    changed once: calling again with the same arguments does nothing, with others fails.
    Returns the model.
    """
    model = _unwrap(model)
    width = width if width is not None else getattr(model, "width", None)
    if width is None:
        raise ValueError(
            f"apply_init needs the model's width: pass width=... ({type(model).__name__} has "
            "no .width)"
        )
    m = check_scaling(rule, base_width, width)
    key = (rule, base_width, width)
    done = getattr(model, "_wdlab_scaling", None)
    if done is not None:
        if done == key:
            return model
        raise ValueError(
            f"the model was already scaled with {done}; build a fresh model for {key}"
        )
    sp_init = sp_init or default_sp_init(model)
    scales = role_scales(rule, m, sp_init=sp_init)
    if rule in INIT_RULES:
        if infos is None:
            infos = classify(model, example_input)
        inputs = input_weights(model, example_input)
        params = dict(model.named_parameters())
        mult = scales["matrix"].init_std_mult
        for info in infos:
            if info.role == "matrix" and info.name not in inputs and mult != 1.0:
                params[info.name].mul_(mult)
        for path, module in _readout_modules(model, infos):
            _swap_readout(model, path, module, m)
        for module in model.modules():
            d_head = getattr(module, "d_head", None)
            if isinstance(getattr(module, "scale", None), float) and isinstance(d_head, int):
                module.scale = 1.0 / math.sqrt(d_head * m)
    model._wdlab_scaling = key
    return model
