"""`wdlab inspect MODEL`: how wdlab classifies a model's parameters, and what each optimizer's
state would cost for it. MODEL is a workload name or `package.module:factory`."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from typing import Any

from wdlab.cli import tables
from wdlab.errors import WdlabError

HELP = "show how wdlab classifies a model's parameters"
_FORM = "MODEL is a workload name or package.module:factory (a callable taking no arguments)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a workload name or package.module:factory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="workload settings, e.g. --set model.qk_norm=true")


def _factory(spec: str) -> Any:
    import inspect as pyinspect  # here, not at the top: building the parser stays light

    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError, TypeError) as err:
        raise WdlabError(f"cannot import {module_name!r} for MODEL {spec!r}: {err}; "
                         f"{_FORM}") from None
    factory = getattr(module, attr, None) if attr.isidentifier() else None
    if not callable(factory):
        raise WdlabError(f"{spec!r}: {module_name} has no callable {attr!r}; {_FORM}")
    try:
        pyinspect.signature(factory).bind()
    except TypeError as err:
        raise WdlabError(f"{spec!r} cannot be called without arguments ({err}); {_FORM}") from None
    except ValueError:  # no signature (a builtin): calling it will tell
        pass
    return factory


def load_model(spec: str, assignments: Sequence[str] = ()) -> tuple[Any, Any]:
    """(model, example_input) from a workload name or 'package.module:factory'."""
    import torch

    from wdlab import workloads

    if ":" not in spec:
        from wdlab.config import build_config

        config = build_config(spec, assignments=list(assignments))
        workload = workloads.from_config(config, seed=0)
        return workload.build_model(), workload.example_input()
    if assignments:
        raise WdlabError("--set configures a workload; it cannot go with package.module:factory",
                         field="--set")
    model = _factory(spec)()
    if not isinstance(model, torch.nn.Module):
        raise WdlabError(f"{spec!r} returned a {type(model).__name__}, not a torch.nn.Module; "
                         f"{_FORM}")
    if not any(True for _ in model.parameters()):
        raise WdlabError(f"{spec!r} built a {type(model).__name__} without parameters: "
                         "nothing to classify; give a model that has parameters")
    return model, None


def main(args: argparse.Namespace) -> int:
    from wdlab.groups import classify

    model, example = load_model(args.model, args.set)
    try:
        infos = classify(model, example_input=example)
    except ValueError as err:  # the probe's input does not fit the model, and similar
        raise WdlabError(f"{args.model}: {err} (from the command line: give the model an "
                         "example_input() method returning an input it accepts)") from None
    rows = []
    for info in infos:
        name = info.name + (f" (= {', '.join(info.tied_to)})" if info.tied_to else "")
        rows.append((name, "x".join(map(str, info.shape)), info.role,
                     "yes" if info.scale_invariant else "", "yes" if info.decay else "",
                     f"{info.numel:,}"))
    tables.print_table(f"parameters of {args.model}",
                       ("name", "shape", "role", "scale-inv.", "decay", "numel"), rows,
                       right=("numel",))
    total = sum(i.numel for i in infos)
    decayed = sum(i.numel for i in infos if i.decay)
    invariant = sum(i.numel for i in infos if i.scale_invariant)
    tables.say(f"{total:,} parameters; {decayed:,} decayed; {invariant:,} scale-invariant")
    _print_memory_table(model, infos)
    return 0


def _print_memory_table(model: Any, infos: list[Any]) -> None:
    """Optimizer state each registered optimizer would keep for this model."""
    from wdlab import optim
    from wdlab.groups import param_groups

    groups = param_groups(model, lr=1e-3, weight_decay=0.0, infos=infos)
    rows = []
    for name in optim.available():
        optimizer = optim.create(name, [dict(g) for g in groups], lr=1e-3)
        size = optim.state_bytes(optimizer)
        rows.append((name, f"{optim.state_bytes_per_param(optimizer):.2f}", human_bytes(size)))
    tables.print_table("optimizer state (each optimizer's default hyperparameters)",
                       ("optimizer", "bytes / parameter", "total"), rows,
                       right=("bytes / parameter", "total"))


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GB"
