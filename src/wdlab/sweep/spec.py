"""What a sweep is: axes, the spec, its trials and their configs, and the store record.

    SweepSpec --trials()--> [{dotted key: value, "seed": s}, ...] --find_or_create_sweep-->
    one sweep in the store (identity = hash of the canonical spec) with its pending trials.

Importing this module stays cheap (no torch): the CLI and spawned workers import it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from wdlab.errors import ConfigError
from wdlab.store import Store

SPEC_FORMAT = 1
MAX_TRIALS = 10_000  # a bigger sweep must be asked for (--max-trials): it is likely a typo
TRIAL_THREADS = 1  # torch threads of a trial that does not set train.threads (see _base_tree)
# A trial that leaves its checkpoint cadence open checkpoints every this many seconds of wall
# time (and at the end, and at Ctrl-C); see _base_tree.
TRIAL_CHECKPOINT_SECONDS = 30.0

# The sweep flags that name a config key; anything else goes through --grid key=values.
FLAG_KEYS = {
    "--optimizer": "optimizer.name",
    "--lr": "optimizer.lr",
    "--wd": "optimizer.weight_decay",
}

# --------------------------------------------------------------------------- axes


class RangeSpec(BaseModel):
    """A log-scaled range lo:hi (optionally :n points for a grid); ints stay ints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lo: float = Field(gt=0)
    hi: float = Field(gt=0)
    n: int | None = Field(default=None, ge=1)
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> RangeSpec:
        if not self.lo < self.hi:
            raise ValueError(f"lo ({self.lo:g}) must be below hi ({self.hi:g})")
        return self

    def grid(self, flag: str) -> list[Any]:
        """n log-spaced points from lo to hi, both ends included exactly."""
        if self.n is None:
            raise ConfigError(
                f"{flag} {self.lo:g}:{self.hi:g}: a grid needs a count, e.g. "
                f"{self.lo:g}:{self.hi:g}:5 (or use --sample halton)",
                field=flag,
            )
        if self.n == 1:
            return [self._clean(self.lo)]
        ratio = math.log(self.hi / self.lo)
        points = [self.lo * math.exp(ratio * i / (self.n - 1)) for i in range(self.n)]
        points[0], points[-1] = self.lo, self.hi
        values = [self._clean(p) for p in points]
        return list(dict.fromkeys(values))  # integer ranges may round two points together

    def at(self, u: float) -> Any:
        """The point a fraction u in [0, 1) of the way from lo to hi in log space."""
        value = self.lo * math.exp(math.log(self.hi / self.lo) * u)
        return self._clean(min(max(value, self.lo), self.hi))

    def _clean(self, value: float) -> Any:
        # 12 significant digits: 1e-4 * 10**1.5 prints as 0.00316227766017, not a float tail.
        if self.integer:
            return int(round(value))
        return float(f"{value:.12g}")


Axis = list[Any] | RangeSpec


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _literal(text: str) -> Any:
    """One list item: a number, a TOML literal (true, "x"), else the bare string."""
    from wdlab.config import parse_value

    number = _number(text)
    return number if number is not None else parse_value(text)


def parse_axis(text: str, flag: str = "--grid") -> Axis:
    """'1e-4:1e-1:7' -> RangeSpec (log-spaced); 'a,b' or '0,0.01' -> a literal list.

    Errors are one line naming `flag`.
    """
    text = text.strip()
    if not text:
        raise ConfigError(f"{flag} needs values, e.g. {flag} 1e-4:1e-1:7 or {flag} a,b", field=flag)
    if ":" in text and "," not in text and '"' not in text:  # a list may hold "ema:0.999"
        parts = [p.strip() for p in text.split(":")]
        if len(parts) not in (2, 3):
            raise ConfigError(
                f"{flag} {text!r}: a range is lo:hi or lo:hi:n (e.g. 1e-4:1e-1:7)", field=flag
            )
        lo, hi = _number(parts[0]), _number(parts[1])
        n = _number(parts[2]) if len(parts) == 3 else None
        if lo is None or hi is None or (len(parts) == 3 and not isinstance(n, int)):
            raise ConfigError(
                f"{flag} {text!r}: lo and hi must be numbers and n a whole count "
                "(e.g. 1e-4:1e-1:7)",
                field=flag,
            )
        if not 0 < lo < hi:
            raise ConfigError(
                f"{flag} {text!r}: a range is log-scaled and needs 0 < lo < hi; "
                f"list the values instead (e.g. {flag} 0,0.01,0.1)",
                field=flag,
            )
        if n is not None and n < 1:
            raise ConfigError(f"{flag} {text!r}: the count n must be >= 1", field=flag)
        integer = isinstance(lo, int) and isinstance(hi, int)
        return RangeSpec(lo=lo, hi=hi, n=n, integer=integer)
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise ConfigError(
            f"{flag} {text!r}: empty item in the list; separate values with single commas",
            field=flag,
        )
    return [_literal(item) for item in items]


def parse_grid(item: str) -> tuple[str, Axis]:
    """'--grid model.width=32,64' -> ('model.width', [32, 64])."""
    key, sep, values = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"--grid expects key=values (e.g. --grid model.width=32,64), got {item!r}",
            field="--grid",
        )
    return key, parse_axis(values, flag=f"--grid {key}")


def _flag_for(key: str) -> str:
    for flag, k in FLAG_KEYS.items():
        if k == key:
            return flag
    return f"--grid {key}"


# --------------------------------------------------------------------------- the spec


class SweepSpec(BaseModel):
    """What to sweep. `n_trials` is the number of Halton points (`--trials`); each point
    and each grid point runs once per seed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workload: str
    axes: dict[str, list[Any] | RangeSpec] = {}
    seeds: int | list[int] = 1
    sample: Literal["grid", "halton"] = "grid"
    n_trials: int | None = Field(default=None, ge=1)
    sample_seed: int = Field(default=0, ge=0)
    assignments: list[str] = []
    tiny: bool = False
    config_file: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if "seed" in self.axes:
            raise ValueError("sweep seeds with --seeds N (or a list), not an axis named 'seed'")
        for key, axis in self.axes.items():
            if isinstance(axis, list) and not axis:
                raise ValueError(f"{_flag_for(key)} has no values")
        if isinstance(self.seeds, int) and self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        if isinstance(self.seeds, list) and (
            not self.seeds
            or any(s < 0 for s in self.seeds)
            or len(set(self.seeds)) < len(self.seeds)
        ):
            raise ValueError(f"--seeds list must be distinct seeds >= 0, got {self.seeds}")
        if self.sample == "halton":
            if self.n_trials is None:
                raise ValueError("--sample halton needs --trials N (the number of points)")
            if not self.axes:
                raise ValueError("--sample halton needs at least one axis (e.g. --lr 1e-4:1e-1)")
        elif self.n_trials is not None:
            raise ValueError(
                "--trials only applies with --sample halton; a grid's size is "
                "the product of its axes"
            )
        return self

    @classmethod
    def create(cls, **values: Any) -> SweepSpec:
        """Construct, turning a validation problem into one ConfigError line."""
        try:
            return cls(**values)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            prefix = f"sweep spec {where}: " if where else "sweep spec: "
            raise ConfigError(prefix + message, field=where or "sweep") from None

    def seed_values(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def points(self) -> list[dict[str, Any]]:
        """The hyperparameter points (without seeds), in a fixed order."""
        if self.sample == "grid":
            keys = list(self.axes)
            columns = [
                axis.grid(_flag_for(k)) if isinstance(axis, RangeSpec) else list(axis)
                for k, axis in self.axes.items()
            ]
            return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*columns)]
        from scipy.stats import qmc

        assert self.n_trials is not None
        sampler = qmc.Halton(d=len(self.axes), scramble=True, seed=self.sample_seed)
        unit = sampler.random(self.n_trials)
        points = []
        for row in unit:
            point = {}
            for u, (key, axis) in zip(row, self.axes.items(), strict=True):
                if isinstance(axis, RangeSpec):
                    point[key] = axis.at(float(u))  # log-uniform
                else:
                    point[key] = axis[min(int(u * len(axis)), len(axis) - 1)]
            points.append(point)
        return points

    def trials(self) -> list[dict[str, Any]]:
        """Every trial's dotted-key assignments, seed included; seeds outermost so that a
        partial sweep has seen every point once before it repeats any."""
        points = self.points()
        return [{**point, "seed": seed} for seed in self.seed_values() for point in points]

    def size(self) -> int:
        """The number of trials, counted without generating them (a typo such as
        `--seeds 1000000` must be refused before a million configs are built)."""
        seeds = self.seeds if isinstance(self.seeds, int) else len(self.seeds)
        if self.sample == "halton":
            assert self.n_trials is not None
            return self.n_trials * seeds
        points = 1
        for key, axis in self.axes.items():
            points *= _axis_size(axis, _flag_for(key))
        return points * seeds

    def check_size(self, max_trials: int = MAX_TRIALS) -> None:
        """Refuse a sweep bigger than `max_trials`, in one line naming the cap and the flag
        that raises it."""
        n = self.size()
        if n > max_trials:
            raise ConfigError(
                f"this sweep has {n:,} trials, over the cap of {max_trials:,} (--max-trials); "
                f"shrink the axes or --seeds, or pass --max-trials {n} to run it anyway",
                field="max_trials",
            )

    def canonical(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def identity(self, *, with_seeds: bool = False) -> str:
        """Hash of the canonical spec without its seeds (and the config file's bytes): the
        same command finds the same sweep, and more seeds of it extend that sweep.
        `with_seeds=True` is wave 1's identity (seeds included), to find sweeps it made."""
        spec = self.canonical()
        if not with_seeds:
            del spec["seeds"]
        payload: dict[str, Any] = {"format": SPEC_FORMAT if with_seeds else 2, "spec": spec}
        if self.config_file is not None:
            path = Path(self.config_file)
            if not path.is_file():
                raise ConfigError(
                    f"config file {self.config_file!r} not found; pass an existing --config file",
                    field="config",
                )
            payload["config_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _axis_size(axis: Axis, flag: str) -> int:
    if isinstance(axis, list):
        return len(axis)
    if axis.n is None:
        axis.grid(flag)  # raises the one-line "a grid needs a count" error
    assert axis.n is not None
    # Integer ranges may round points together; count exactly unless the axis alone is huge.
    return len(axis.grid(flag)) if axis.n <= 1_000_000 else axis.n


def _base_tree(spec: SweepSpec) -> dict[str, Any]:
    """The resolved config every trial starts from (recipe <- file <- --set), so workers
    never re-read the config file and a sweep stays what it was when it was created.

    Two settings are filled in when the user left them open. A checkpoint cadence in
    seconds (TRIAL_CHECKPOINT_SECONDS), so that a killed trial resumes instead of starting
    over, at most that much training lost per worker; it used to be a checkpoint at every
    evaluation, which cost a 3000-step teacher trial 60 checkpoints (store commit, torch.save,
    fsync: ~25 ms each) where 30 s gives none but the last. And a fixed torch
    thread count (TRIAL_THREADS): a CPU result depends on the number of intra-op threads
    (reductions split differently), so a trial must not take its count from --workers or
    the machine's cores; stored here, it is part of every trial's config and of its run's.
    Neither changes a trial's result: a resumed run is bit-identical whichever step its
    checkpoint was written at.
    """
    from wdlab.config import build_config

    tree = build_config(
        spec.workload, file=spec.config_file, assignments=list(spec.assignments), tiny=spec.tiny
    ).to_dict()
    from wdlab.config import TrainConfig

    # The engine's default cadence (500 steps / 60 s) counts as left open.
    defaults = TrainConfig()
    train = tree["train"]
    if train.get("checkpoint_every") in (None, defaults.checkpoint_every) and train.get(
        "checkpoint_seconds"
    ) == defaults.checkpoint_seconds:
        train["checkpoint_every"] = None
        train["checkpoint_seconds"] = TRIAL_CHECKPOINT_SECONDS
    if train.get("threads") is None:
        train["threads"] = TRIAL_THREADS
    return tree


def trial_config(base: dict[str, Any], params: dict[str, Any], name: str) -> Any:
    """The validated RunConfig of one trial."""
    import copy

    from wdlab.config import set_dotted, switch_optimizer, validate

    tree = copy.deepcopy(base)
    if "optimizer.name" in params:  # another optimizer: the recipe's AdamW betas do not apply
        tree = switch_optimizer(tree, params["optimizer.name"])
    for key, value in params.items():
        set_dotted(tree, key, value)
    tree["name"] = name
    return validate(tree)


def run_name(sweep_name: str, index: int) -> str:
    """The run name of trial `index` (stable: a resumed trial keeps its name)."""
    return f"{sweep_name}-t{index}"


def trial_cost(base: dict[str, Any], params: dict[str, Any]) -> float:
    """A relative estimate of how long a trial trains, for longest-first scheduling:
    steps x batch size x the product of the model section's integer sizes (width, depth,
    context, ...). Exact cost is unknowable before training (trials may stop at their
    target), but every built-in workload gets longer as each of these grows, so the order
    is right whenever one of them varies across a sweep. Torch-free and cheap."""
    steps = params.get("steps", base.get("steps"))
    batch = params.get("data.batch_size", (base.get("data") or {}).get("batch_size"))
    model = dict(base.get("model") or {})
    model.update({k.removeprefix("model."): v for k, v in params.items() if k.startswith("model.")})
    cost = 1.0
    for value in (steps, batch, *model.values()):
        if _is_size(value):
            cost *= value
    return cost


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def longest_first(base: dict[str, Any], trials: dict[int, dict[str, Any]]) -> list[int]:
    """Trial indices by estimated cost, longest first; equal costs keep index order (so a
    sweep of equal trials runs in its natural, seeds-outermost order)."""
    return sorted(trials, key=lambda i: (-trial_cost(base, trials[i]), i))


Prepared = tuple[str, str, dict[str, Any], list[dict[str, Any]]]
"""identity, sweep name, base config, trials: what validated_trials returns."""


def validated_trials(spec: SweepSpec) -> Prepared:
    """The spec's identity, sweep name, base config and trials, each trial's config validated:
    run before the store is opened, so an invalid axis fails in one line with nothing created."""
    ident = spec.identity()
    name = spec.name or f"{spec.workload}-{ident[:8]}"
    base = _base_tree(spec)
    params = spec.trials()
    for index, trial in enumerate(params):
        trial_config(base, trial, run_name(name, index))
    return ident, name, base, params


def find_or_create_sweep(
    store: Store, spec: SweepSpec, prepared: Prepared | None = None
) -> tuple[str, bool]:
    """The id of the sweep with this spec's identity (created with its trials if new) and
    whether it was created now. Every trial's config is validated before anything runs.

    Find-or-create is one store transaction on a UNIQUE identity, so two identical commands
    started together share one sweep; a found sweep gains the trials of seeds it lacks."""
    ident, name, base, params = prepared or validated_trials(spec)
    stored = {
        "format": SPEC_FORMAT,
        "identity": ident,
        "spec": spec.canonical(),
        "base_config": base,
    }

    def merge(old: dict[str, Any]) -> dict[str, Any]:
        # Keep the sweep's own base config; its seeds become the union of both commands'.
        seeds = sorted(set(_stored_seeds(old)) | set(spec.seed_values()))
        count = len(seeds) if seeds == list(range(len(seeds))) else None
        return {**old, "identity": ident, "spec": {**old.get("spec", {}), "seeds": count or seeds}}

    sweep_id, created, _ = store.find_or_create_sweep(
        identity=ident,
        spec=stored,
        name=name,
        trials=params,
        aliases=[spec.identity(with_seeds=True)],
        merge_spec=merge,
    )
    return sweep_id, created


def _stored_seeds(stored: dict[str, Any]) -> list[int]:
    seeds = stored.get("spec", {}).get("seeds", 1)
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)
