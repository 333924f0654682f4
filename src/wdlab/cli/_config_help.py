"""What `wdlab run --help` lists below the flags: every config key with its default, and
each optimizer's hyperparameters with their defaults — without importing torch, so help
stays instant: the config classes are torch-free, and the optimizers' signatures are read
from their source files (ast), not imported. tests/test_cli_ergonomics.py checks that this
reading equals inspect.signature of the imported classes."""

from __future__ import annotations

import ast
import importlib.util
import textwrap
from typing import Any

SKIPPED = ("self", "params", "impl", "mode")  # the parameters, and implementation switches


def _wrap(head: str, items: list[str], indent: int = 6) -> list[str]:
    return textwrap.wrap(head + ", ".join(items), width=96, initial_indent="  ",
                         subsequent_indent=" " * indent, break_on_hyphens=False)


def _show(value: object) -> str:
    return "∅" if value is None else str(value)


def _default(node: ast.expr, constants: dict[str, Any]) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:  # a name: a module constant, or torch.optim's `required`
        if isinstance(node, ast.Name) and node.id in constants:
            return constants[node.id]
        if isinstance(node, ast.Name) and node.id == "required":
            return "required"
        return ast.unparse(node)


def _parse(module: str) -> ast.Module | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as fh:
        return ast.parse(fh.read())


def _constants(tree: ast.Module, follow: bool = True) -> dict[str, Any]:
    """Module-level NAME = <literal> assignments (e.g. Muon's Newton-Schulz coefficients),
    and those imported from another wdlab module (one level)."""
    out: dict[str, Any] = {}
    for node in tree.body:
        if follow and isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "wdlab."):
            source = _parse(node.module or "")
            found = _constants(source, follow=False) if source is not None else {}
            out.update({a.asname or a.name: found[a.name] for a in node.names
                        if a.name in found})
            continue
        target = (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
                  else node.target if isinstance(node, ast.AnnAssign) else None)
        if isinstance(target, ast.Name) and getattr(node, "value", None) is not None:
            try:
                out[target.id] = ast.literal_eval(node.value)  # type: ignore[arg-type]
            except ValueError:
                continue
    return out


def source_hyperparameters(module: str, cls: str) -> dict[str, Any] | None:
    """{keyword: default} of `cls.__init__` in `module`'s source, or None if not found."""
    tree = _parse(module)
    if tree is None:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    return _arguments(item.args, _constants(tree))
    return None


def _arguments(args: ast.arguments, constants: dict[str, Any]) -> dict[str, Any]:
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += list(args.defaults)
    out: dict[str, Any] = {}
    pairs = [*zip(positional, defaults, strict=True), *zip(args.kwonlyargs, args.kw_defaults,
                                                           strict=True)]
    for arg, default in pairs:
        if arg.arg not in SKIPPED:
            out[arg.arg] = "required" if default is None else _default(default, constants)
    return out


def _keys(model: Any, prefix: str = "") -> list[str]:
    """KEY=DEFAULT for each field; a nested section (schedule.wd) as its own dotted keys."""
    out: list[str] = []
    for key, field in model.model_fields.items():
        nested = getattr(field.default, "model_fields", None)
        if nested is not None:
            out += _keys(type(field.default), f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}" if field.is_required()
                       else f"{prefix}{key}={_show(field.default)}")
    return out


def config_keys_help() -> str:
    from wdlab.config import LogConfig, OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig
    from wdlab.optim import ALIASES, REGISTRY

    lines = ["settings (--set KEY=VALUE, or a [section] of a --config TOML file; "
             "--print-config shows the resolved values):"]
    top = [k for k in RunConfig.model_fields
           if k not in ("workload", "optimizer", "schedule", "train", "log", "model", "data")]
    lines += _wrap("", top)
    for section, model in (("optimizer", OptimizerConfig), ("schedule", ScheduleConfig),
                           ("train", TrainConfig), ("log", LogConfig)):
        lines += _wrap(f"{section}.: ", _keys(model))
    lines.append("    (optimizer.* also takes the optimizer's own hyperparameters, below)")
    lines += _wrap("model.*, data.*: ", ["the workload's own (e.g. digits model.width",
                                         "charlm model.qk_norm); `wdlab run WORKLOAD "
                                         "--print-config` lists them with their values"])
    lines.append("optimizers (--optimizer NAME) and their hyperparameters (defaults):")
    for name in sorted(REGISTRY):
        entry = REGISTRY[name]
        params = source_hyperparameters(entry.module, entry.cls)
        shown = ([f"{k}={_show(v)}" for k, v in params.items()] if params is not None
                 else ["see its docstring"])
        lines += _wrap(f"{name}: ", shown)
    aliases = [f"{alias} -> {target}" + (
        " (" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")" if settings else "")
        for alias, (target, settings) in sorted(ALIASES.items())]
    lines += _wrap("aliases: ", aliases)
    return "\n".join(lines)
