"""Schedule math and the schedulers that apply it: the one source of every multiplier.

A `Schedule` is a pure function step -> multiplier (frozen, plain values, so it checkpoints as
a dict). The engine (wdlab.train) calls it for the lr and, separately, for the weight decay;
`LRSchedule` is the same function as a torch LRScheduler for any torch optimizer, and
`GroupKeyScheduler` applies one to any other param-group key (weight_decay first), so the
decay can follow its own schedule, independent of the lr's.

Multiplier s(t) for 0-based step t, with T = total and W = warmup (docs/optimizers.md):
  warm-up      t < W: (t + 1)/W
  constant     1
  linear       final + (1 − final)·(1 − x)              x = min((t − W)/(T − W), 1)
  cosine       final + (1 − final)·(1 + cos πx)/2
  power        final + (1 − final)·(1 − x)^power        (torch's PolynomialLR at final 0)
  wsd          1 until the cooldown, the last round(cooldown·T) steps, then
               final + (1 − final)·f(x) with x the progress through the cooldown and f the
               cooldown shape: linear 1 − x, cosine (1 + cos πx)/2, sqrt 1 − √x, power (1 − x)^p
"linear" at final 0 is linear decay to zero (D2Z, Bergsma et al. 2025); "wsd" is
warmup-stable-decay (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond
Fixed Training Durations", whose 1 − √x cooldown is shape "sqrt").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from wdlab._names import COOLDOWN_SHAPES
from wdlab._names import SCHEDULE_KINDS as KINDS


def _shape(name: str, x: float, power: float) -> float:
    """The decaying part f(x), x in [0, 1], f(0) = 1 and f(1) = 0."""
    if name == "linear":
        return 1.0 - x
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * x))
    if name == "sqrt":
        return 1.0 - math.sqrt(x)
    return (1.0 - x) ** power


@dataclass(frozen=True)
class Schedule:
    """step -> multiplier (module docstring). `final` is the multiplier the decay ends at."""

    kind: str
    total: int
    warmup: int = 0
    final: float = 0.0
    cooldown: float = 0.2
    shape: str = "linear"
    power: float = 2.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"schedule kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.shape not in COOLDOWN_SHAPES:
            raise ValueError(
                f"cooldown shape must be one of {', '.join(COOLDOWN_SHAPES)}; got {self.shape!r}"
            )
        for name, value, ok, want in (
            ("total", self.total, isinstance(self.total, int) and self.total > 0, "an int > 0"),
            ("warmup", self.warmup, isinstance(self.warmup, int) and self.warmup >= 0,
             "an int >= 0"),
            ("final", self.final, 0.0 <= self.final <= 1.0, "in [0, 1]"),
            ("cooldown", self.cooldown, 0.0 < self.cooldown <= 1.0, "in (0, 1]"),
            ("power", self.power, self.power > 0, "> 0"),
        ):
            if not ok:
                raise ValueError(f"schedule {name} must be {want}; got {value!r}")

    def __call__(self, step: int) -> float:
        if self.warmup > 0 and step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        if self.kind == "wsd":
            length = max(round(self.cooldown * self.total), 1)
            start = max(self.total - length, self.warmup)
            if step < start:
                return 1.0
            x = min((step - start) / max(self.total - start, 1), 1.0)
            shape = self.shape
        else:
            x = min(max(step - self.warmup, 0) / max(self.total - self.warmup, 1), 1.0)
            shape = self.kind
        return self.final + (1.0 - self.final) * _shape(shape, x, self.power)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_schedule(value: Any) -> Any:
    """A Schedule from its to_dict() form (a checkpoint); anything else as it is."""
    return Schedule(**value) if isinstance(value, dict) else value


class LRSchedule(torch.optim.lr_scheduler.LRScheduler):
    """A Schedule as a torch LRScheduler: lr_t = initial_lr · schedule(t), t = last_epoch.

    Call scheduler.step() after optimizer.step(), as with torch's schedulers; state_dict()
    holds plain values only (loads with torch.load(weights_only=True)).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, schedule: Schedule, last_epoch: int = -1
    ) -> None:
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a wdlab.schedules.Schedule, got {schedule!r}")
        self.schedule = schedule
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [base * self.schedule(self.last_epoch) for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["schedule"] = self.schedule.to_dict()
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        state_dict["schedule"] = _as_schedule(state_dict["schedule"])
        super().load_state_dict(state_dict)


class GroupKeyScheduler:
    """Schedules any numeric param-group key: group[key] = group["initial_<key>"] · fn(t).

    `fn` is a Schedule (checkpointed with the scheduler) or any step -> multiplier callable
    (not checkpointed, like torch's LambdaLR). Works with any torch optimizer; like torch's
    LRScheduler it sets step 0's value on construction and advances one step per step().
    `initial_<key>` lives in the param groups, so it is in the optimizer's state_dict too.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        key: str = "weight_decay",
        fn: Schedule | Callable[[int], float] | None = None,
        last_epoch: int = -1,
    ) -> None:
        if fn is None or not callable(fn):
            raise ValueError(f"fn must be a Schedule or a callable step -> multiplier, got {fn!r}")
        self.optimizer = optimizer
        self.key = key
        self.fn = fn
        self.initial_key = f"initial_{key}"
        for i, group in enumerate(optimizer.param_groups):
            if key not in group or isinstance(group[key], bool) or not isinstance(
                group[key], (int, float, torch.Tensor)
            ):
                raise ValueError(
                    f"param group {i} has no numeric {key!r} to schedule "
                    f"(its keys: {', '.join(k for k in group if k != 'params')})"
                )
            if last_epoch == -1:
                group.setdefault(self.initial_key, group[key])
            elif self.initial_key not in group:
                raise ValueError(
                    f"last_epoch={last_epoch} resumes a schedule, but param group {i} has no "
                    f"{self.initial_key!r}; load the optimizer's state_dict first"
                )
        self.last_epoch = last_epoch
        self.step()

    def step(self) -> None:
        self.last_epoch += 1
        multiplier = self.fn(self.last_epoch)
        for group in self.optimizer.param_groups:
            group[self.key] = group[self.initial_key] * multiplier

    def get_last_value(self) -> list[Any]:
        """The scheduled key of each group, as last set."""
        return [group[self.key] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        fn = self.fn.to_dict() if isinstance(self.fn, Schedule) else None
        return {"key": self.key, "last_epoch": self.last_epoch, "schedule": fn}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("key", self.key) != self.key:
            raise ValueError(
                f"this state_dict schedules {state_dict['key']!r}, not {self.key!r}; load it "
                f"into GroupKeyScheduler(optimizer, key={state_dict['key']!r}, ...)"
            )
        self.last_epoch = int(state_dict["last_epoch"])
        if state_dict.get("schedule") is not None:
            self.fn = _as_schedule(state_dict["schedule"])
