"""What `wdlab run --help` lists below the flags: every config key, each workload's own
model.* / data.* keys, and each optimizer's hyperparameters with their defaults. Built only
when help is shown (it imports the workloads and optimizers, so torch)."""

from __future__ import annotations

import textwrap


def _wrap(head: str, items: list[str], indent: int = 4) -> list[str]:
    text = head + ", ".join(items)
    return textwrap.wrap(text, width=96, initial_indent="  ",
                         subsequent_indent=" " * indent, break_on_hyphens=False)


def _show(value: object) -> str:
    return "∅" if value is None else str(value)


def config_keys_help() -> str:
    from wdlab import optim, workloads
    from wdlab.config import OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig

    lines = ["settings (--set KEY=VALUE, or a [section] of a --config TOML file; "
             "`--print-config` shows the resolved values):"]
    top = [k for k in RunConfig.model_fields if k not in
           ("workload", "optimizer", "schedule", "train", "model", "data")]
    lines += _wrap("", top)
    for section, model in (("optimizer", OptimizerConfig), ("schedule", ScheduleConfig),
                           ("train", TrainConfig)):
        keys = [k if f.is_required() else f"{k}={_show(f.default)}"
                for k, f in model.model_fields.items()]
        lines += _wrap(f"{section}.: ", keys, indent=6)
    lines.append("    (optimizer.* also takes the optimizer's own hyperparameters, below)")
    lines.append("workload settings (model.* and data.*; your own workload declares its own):")
    for name in workloads.available():
        cls = workloads.get(name)
        for section, model in (("model", cls.ModelConfig), ("data", cls.DataConfig)):
            lines += _wrap(f"{name} {section}.: ", list(model.model_fields), indent=6)
    lines.append("optimizers (--optimizer NAME) and their hyperparameters (defaults):")
    for name in optim.available():
        params = [f"{k}={_show(v)}" for k, v in optim.hyperparameters(name).items()]
        lines += _wrap(f"{name}: ", params, indent=6)
    aliases = [f"{alias} -> {target}" + (
        " (" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")" if settings else "")
        for alias, (target, settings) in sorted(optim.ALIASES.items())]
    lines += _wrap("aliases: ", aliases, indent=6)
    return "\n".join(lines)
