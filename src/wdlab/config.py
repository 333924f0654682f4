"""Run configuration: typed, validated values built from a workload's recipe plus user overrides.

Precedence, lowest first: the workload's recipe, a TOML file (--config), the common flags
(--optimizer, --lr, --wd, --steps, --seed), then each --set key=value. Every error names the
dotted field and how to fix it, in one line (wdlab.errors.ConfigError).
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from wdlab._names import COOLDOWN_SHAPES, DECAY_MODES, DECAY_TARGETS, SCHEDULE_KINDS
from wdlab.errors import ConfigError
from wdlab.scaling import RULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OptimizerConfig(BaseModel):
    """Optimizer name and hyperparameters; extra keys (betas, momentum, ...) go to the optimizer."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = "adamw"
    lr: float = Field(gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    decay: Literal[DECAY_MODES] = "decoupled"  # type: ignore[valid-type]
    decay_to: Literal[DECAY_TARGETS] = "zero"  # type: ignore[valid-type]
    decay_ema: float = Field(default=0.999, ge=0, lt=1)
    # Cautious update masking (wdlab.optim.wrappers.CautiousUpdate) around the optimizer.
    cautious: bool = False
    decay_embedding: bool = True
    decay_output: bool = True
    # Norm gains (which the grouping does not decay) decay toward 1 at this rate, with the
    # optimizer's decay mode (decay_to="one" on the gain groups; Moonshot's zero-centred gains).
    gain_decay: float = Field(default=0.0, ge=0)
    # Width scaling (wdlab.scaling, docs/scaling.md): lr and weight_decay are tuned at
    # base_width and carried to the workload's width by this rule.
    scaling: Literal[RULES] | None = None  # type: ignore[valid-type]
    base_width: int | None = Field(default=None, ge=1)
    # A wdlab.optim.wrappers wrapper around the optimizer: "rotational" is REQ's rotational
    # variant (RotationalWrapper: scale-invariant weights rotate by the equilibrium angle).
    wrapper: Literal["rotational"] | None = None

    @model_validator(mode="after")
    def _scaling_needs_base_width(self) -> OptimizerConfig:
        if self.scaling is not None and self.base_width is None:
            raise ValueError(
                "optimizer.scaling needs optimizer.base_width (the width lr and weight_decay "
                "were tuned at); set it with --set optimizer.base_width=64"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _resolve_alias(cls, data: Any) -> Any:
        """An alias (adam, sgd, adamw_torch, ...: wdlab.optim.ALIASES) is stored as the
        optimizer it names, with the settings that give it its meaning (adam: decay l2)
        where the config does not set them."""
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            from wdlab.optim import ALIASES

            alias = ALIASES.get(data["name"].lower())
            if alias is not None:
                data = {**alias[1], **data, "name": alias[0]}
        return data

    def hyperparameters(self) -> dict[str, Any]:
        """Keyword arguments for the optimizer class (everything but the grouping options)."""
        extra = dict(self.model_extra or {})
        for key, value in extra.items():
            if isinstance(value, list):
                extra[key] = tuple(value)
        target = {}
        if self.decay_to != "zero":  # only then: an optimizer without decay_to still builds
            target = {"decay_to": self.decay_to, "decay_ema": self.decay_ema}
        return {"weight_decay": self.weight_decay, "decay": self.decay, **target, **extra}


class _Shape(_Strict):
    """The cooldown of a "wsd" schedule and the exponent of "power" (wdlab.schedules)."""

    cooldown: float = Field(default=0.2, gt=0, le=1)  # wsd: fraction of the steps
    cooldown_shape: Literal[COOLDOWN_SHAPES] = "linear"  # type: ignore[valid-type]
    power: float = Field(default=2.0, gt=0)


class WdScheduleConfig(_Shape):
    """weight_decay_t = weight_decay · s_t, a schedule of its own (default: constant)."""

    kind: Literal[SCHEDULE_KINDS] = "constant"  # type: ignore[valid-type]
    warmup: int = Field(default=0, ge=0)
    final: float = Field(default=0.0, ge=0, le=1)


class ScheduleConfig(_Shape):
    kind: Literal[SCHEDULE_KINDS] = "cosine"  # type: ignore[valid-type]
    warmup: int = Field(default=0, ge=0)
    final_lr_fraction: float = Field(default=0.0, ge=0, le=1)
    wd: WdScheduleConfig = WdScheduleConfig()

    @field_validator("wd", mode="before")
    @classmethod
    def _kind_alone(cls, value: Any) -> Any:
        """`--set schedule.wd=cosine` is short for schedule.wd.kind=cosine."""
        return {"kind": value} if isinstance(value, str) else value


class TrainConfig(_Strict):
    eval_every: int = Field(default=100, gt=0)
    clip: float | None = Field(default=None, gt=0)
    # A checkpoint every N steps or T seconds of wall time, whichever comes first, plus
    # one at the end; 0 (stored as None) turns that trigger off (both: at the end only).
    checkpoint_every: int | None = Field(default=500, ge=0)
    checkpoint_seconds: float | None = Field(default=60.0, ge=0)
    on_nonfinite: Literal["stop", "skip"] = "stop"
    stop_at_target: bool = True
    max_seconds: float | None = Field(default=None, gt=0)
    threads: int | None = Field(default=None, gt=0)
    monitor: Literal["off", "light", "full", "summary"] = "light"
    monitor_every: int = Field(default=10, gt=0)
    log_every: int = Field(default=1, gt=0)
    # Weight averaging and what is evaluated (wdlab.averaging, wdlab.evaluation,
    # docs/running.md): the average's spec, whether the raw weights are evaluated beside it,
    # which weights the target (and time-to-target) is read on ("auto": the average when
    # one is kept), and how many training batches recompute BatchNorm statistics.
    average: str = "off"
    eval_raw: bool = True
    target_weights: Literal["auto", "raw", "average"] = "auto"
    bn_batches: int = Field(default=8, ge=0)
    # With more than one rank (torchrun, or `wdlab run --nproc N`): DDP replicas or FSDP2
    # shards (wdlab.parallel); ignored in one process.
    parallel: Literal["ddp", "fsdp"] = "ddp"

    @field_validator("checkpoint_every", "checkpoint_seconds")
    @classmethod
    def _zero_is_off(cls, value: float | None) -> float | None:
        return None if value == 0 else value

    @field_validator("average", mode="before")
    @classmethod
    def _average_spec(cls, value: Any) -> str:
        from wdlab.averaging import canonical

        return canonical(value)

    @field_validator("eval_raw", "target_weights")
    @classmethod
    def _needs_an_average(cls, value: Any, info: ValidationInfo) -> Any:
        average = info.data.get("average", "off")
        if average == "off" and value in (False, "average"):
            what = "false" if value is False else repr(value)
            raise ValueError(
                f"{what} needs a weight average: set --set train.average=ema:0.999 (or "
                "another spec, docs/running.md), or drop this setting"
            )
        if value == "raw" and info.data.get("eval_raw") is False:
            raise ValueError(
                "'raw' needs the raw weights evaluated: drop train.eval_raw=false, or read "
                "the target on the average"
            )
        return value

    def target_on_average(self) -> bool:
        """Whether the target and time-to-target are read on the averaged weights."""
        return self.average != "off" and self.target_weights != "raw"


class LogConfig(_Strict):
    """Live loggers the run's metrics are mirrored to (the store stays the record); paths
    and defaults: wdlab.monitor.sinks and docs/integrations.md. Not part of what a run
    computes, so --resume may change this section."""

    sinks: list[Literal["tensorboard", "mlflow", "wandb"]] = []
    tensorboard_dir: str | None = None
    mlflow_uri: str | None = None
    mlflow_experiment: str = "wdlab"
    wandb_project: str = "wdlab"
    wandb_dir: str | None = None
    wandb_mode: Literal["offline", "online", "disabled"] | None = None

    @field_validator("sinks", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """--set log.sinks=tensorboard,mlflow as well as a TOML list."""
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value


MAX_SEED = 2**63 - 1  # the store keeps seeds as SQLite integers (signed 64-bit)


class RunConfig(_Strict):
    workload: str
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    steps: int = Field(gt=0)
    target: float | None = None
    name: str | None = None
    optimizer: OptimizerConfig
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    log: LogConfig = LogConfig()
    model: dict[str, Any] = {}
    data: dict[str, Any] = {}

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse_value(text: str) -> Any:
    """A --set value as a TOML literal (numbers, booleans, lists, quoted strings); else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignment(item: str) -> tuple[str, Any]:
    """'a.b=1e-3' -> ('a.b', 0.001)."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value (e.g. --set optimizer.lr=1e-3), got {item!r}")
    return key, parse_value(value.strip())


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """tree['a']['b'] = value for key 'a.b', creating sections as needed."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A copy of base with update merged in, section by section."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass an existing --config file")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from None


def _known_keys(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The setting names beside the last part of `loc`, walking nested config sections."""
    for part in loc[:-1]:
        if model is None:
            return []
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        model = annotation if isinstance(annotation, type) and issubclass(
            annotation, BaseModel) else None
    return list(model.model_fields) if model is not None else []


def _first_error(
    err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> ConfigError:
    from wdlab._suggest import did_you_mean

    first = err.errors()[0]
    field = prefix + ".".join(str(p) for p in first["loc"])
    got = first.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        loc = tuple(first["loc"])
        hint = did_you_mean(str(loc[-1]), _known_keys(model, loc)) if loc else ""
        message = f"unknown setting{hint or '; check the spelling'} (see `wdlab run --help`)"
    elif first["type"] == "missing":
        message = "required setting is missing"
    fix = f"; set it with --set {field}=VALUE" if first["type"] != "extra_forbidden" else ""
    return ConfigError(f"config error: {field}: {message}{got_text}{fix}", field=field)


def build_config(
    workload: str,
    *,
    file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    assignments: list[str] | None = None,
    tiny: bool = False,
) -> RunConfig:
    """Recipe <- file <- flags <- --set, validated (the workload's model/data sections too)."""
    from wdlab import workloads  # here: the config's own classes stay torch-free (--help)

    try:
        workloads.get(workload)
    except ValueError as err:
        raise ConfigError(str(err) + " (the WORKLOAD argument)", field="workload") from None
    user: dict[str, Any] = {}
    if file is not None:
        user = load_toml(file)
        if user.get("workload", workload) != workload:
            raise ConfigError(
                f"config file is for workload {user['workload']!r}, but the command names "
                f"{workload!r}; run `wdlab run {user['workload']}` or edit the file"
            )
    for key, value in (flags or {}).items():
        if value is not None:
            set_dotted(user, key, value)
    for item in assignments or []:
        key, value = parse_assignment(item)
        set_dotted(user, key, value)
    recipe = {"workload": workload, **workloads.recipe(workload, tiny=tiny)}
    _check_tree(user)
    recipe["optimizer"] = _recipe_optimizer(recipe["optimizer"], user.get("optimizer", {}))
    return validate(deep_merge(recipe, user))


CORE_OPTIMIZER_KEYS = frozenset(OptimizerConfig.model_fields)


def switch_optimizer(tree: dict[str, Any], name: str) -> dict[str, Any]:
    """A copy of a resolved config tree set to optimizer `name`. Settings that only the old
    optimizer takes are dropped when they are the workload recipe's own (e.g. AdamW's betas);
    ones the user set stay, and the optimizer says if it cannot take them."""
    from wdlab import workloads

    out = copy.deepcopy(tree)
    section = out.setdefault("optimizer", {})
    if str(section.get("name", "")).lower() != str(name).lower():
        recipe_values = [
            workloads.recipe(out["workload"], tiny=tiny).get("optimizer", {})
            for tiny in (False, True)
        ]
        for key in [k for k in section if k not in CORE_OPTIMIZER_KEYS]:
            if any(key in r and r[key] == section[key] for r in recipe_values):
                del section[key]
    section["name"] = name
    return out


def _recipe_optimizer(recipe: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """The recipe's optimizer section; when the user picks another optimizer, only the keys
    every optimizer takes (lr, weight_decay, ...) carry over, not e.g. AdamW's betas."""
    if "name" not in user or str(user["name"]).lower() == str(recipe.get("name", "")).lower():
        return recipe
    return {key: value for key, value in recipe.items() if key in CORE_OPTIMIZER_KEYS}


SECTIONS = ("optimizer", "schedule", "train", "log", "model", "data")


def _check_tree(tree: Any) -> None:
    """What pydantic would let through or turn into a traceback: a section that is not a
    table (`optimizer = 3`), and NaN or inf anywhere (JSON cannot hold them)."""
    if not isinstance(tree, dict):
        raise ConfigError(f"config error: the config must be a table, got {tree!r}")
    for section in SECTIONS:
        if section in tree and not isinstance(tree[section], dict):
            raise ConfigError(
                f"config error: {section}: must be a table (a [{section}] section or "
                f"--set {section}.KEY=VALUE), got {tree[section]!r}",
                field=section,
            )

    def walk(node: Any, where: str) -> None:
        if isinstance(node, float) and not math.isfinite(node):
            raise ConfigError(
                f"config error: {where}: must be a finite number (got {node!r}); "
                f"set it with --set {where}=VALUE",
                field=where,
            )
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{where}.{key}" if where else str(key))
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value, where)

    walk(tree, "")


def validate(tree: dict[str, Any]) -> RunConfig:
    """A RunConfig from a nested dict, with the workload's sections checked too."""
    from wdlab import workloads

    _check_tree(tree)
    try:
        config = RunConfig.model_validate(tree)
    except ValidationError as err:
        raise _first_error(err, model=RunConfig) from None
    try:
        cls = workloads.get(config.workload)
    except ValueError as err:
        raise ConfigError(f"config error: workload: {err}", field="workload") from None
    for section, model in (("model", cls.ModelConfig), ("data", cls.DataConfig)):
        try:
            model.model_validate(getattr(config, section))
        except ValidationError as err:
            raise _first_error(err, prefix=f"{section}.", model=model) from None
    return config
