"""Weight averages the engine keeps beside the raw weights: EMA, tail-EMA, SWA and LAWA.

Why: an average of recent iterates often evaluates better than the last iterate, and can
stand in for the lr decay (Polyak averaging; Izmailov et al. 2018, "Averaging Weights Leads to
Wider Optima" (SWA); Kaddour 2022, "Stop Wasting My Time!" (LAWA); Sanyal et al. 2023,
"Early Weight Averaging meets High Learning Rates"). The syntax of `train.average`:

    off                      no average (the default)
    ema:BETA[@START][/EVERY] a ← BETA·a + (1−BETA)·w after every EVERY-th step (default 1),
                             starting at fraction START of the step budget (default 0)
    tail_ema:BETA@START      the same, START required (the "tail" EMA)
    swa:WINDOW[/EVERY]       the uniform mean of the weights after every EVERY-th step of the
                             last WINDOW fraction of the budget (swa:0.25: the last quarter)
    lawa:K/EVERY             the uniform mean of the latest K snapshots, one every EVERY steps
                             (a sliding window)

The first update copies the weights (torch.optim.swa_utils.AveragedModel's rule, so EMA and
SWA equal AveragedModel with get_ema_multi_avg_fn / its default average to float rounding).
Only parameters are averaged; buffers come from the live model, and BatchNorm statistics are
recomputed for the averaged weights by wdlab.evaluation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch-free at import: config validation and reports parse specs
    import torch

KINDS = ("ema", "tail_ema", "swa", "lawa")
SYNTAX = (
    "use off, ema:BETA[@START][/EVERY], tail_ema:BETA@START, swa:WINDOW[/EVERY] or "
    "lawa:K/EVERY (e.g. ema:0.999, tail_ema:0.999@0.5, swa:0.25, lawa:5/50)"
)
_PATTERN = re.compile(
    r"^(?P<kind>[a-z_]+):(?P<arg>[^@/]+)(?:@(?P<start>[^/]+))?(?:/(?P<every>.+))?$"
)


@dataclass(frozen=True)
class AverageSpec:
    """A parsed `train.average`. start: fraction of the step budget before which nothing is
    averaged; every: steps between updates; decay (EMA) or keep (LAWA's K)."""

    kind: str  # "ema", "swa" or "lawa" (tail_ema is ema with a start)
    start: float = 0.0
    every: int = 1
    decay: float | None = None
    keep: int | None = None

    @property
    def text(self) -> str:
        """The canonical spelling (what the stored config holds)."""
        every = f"/{self.every}" if self.every != 1 or self.kind == "lawa" else ""
        if self.kind == "ema":
            start = f"@{self.start:g}" if self.start else ""
            return f"{'tail_ema' if self.start else 'ema'}:{self.decay:g}{start}{every}"
        if self.kind == "swa":
            return f"swa:{1 - self.start:g}{every}"
        return f"lawa:{self.keep}{every}"

    def start_step(self, steps: int) -> int:
        """Updates happen after steps t > start_step (1-based steps)."""
        return math.floor(self.start * steps)

    def due(self, step: int, steps: int) -> bool:
        """Whether the average takes the weights after 1-based `step` of a `steps` budget."""
        if self.kind == "lawa":
            return step % self.every == 0
        begin = self.start_step(steps)
        return step > begin and (step - begin) % self.every == 0


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}; {SYNTAX}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {text!r}; {SYNTAX}")
    return value


def _integer(text: str | None, what: str) -> int:
    if text is None or not text.isdigit() or int(text) < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {text!r}; {SYNTAX}")
    return int(text)


def parse(text: Any) -> AverageSpec | None:
    """The spec of a `train.average` value (None for "off"); ValueError in one line naming
    what is wrong and the syntax."""
    if not isinstance(text, str):
        raise ValueError(f"must be a string, got {text!r}; {SYNTAX}")
    value = text.strip().lower()
    if value in ("off", "none", ""):
        return None
    match = _PATTERN.match(value)
    if not match or match["kind"] not in KINDS:
        raise ValueError(f"unknown average {text!r}; {SYNTAX}")
    kind, arg, start, every = match["kind"], match["arg"], match["start"], match["every"]
    steps = _integer(every, "EVERY") if every is not None else 1
    if kind in ("ema", "tail_ema"):
        decay = _number(arg, "BETA")
        if not 0 < decay < 1:
            raise ValueError(f"BETA must be in (0, 1), got {arg}; {SYNTAX}")
        if kind == "tail_ema" and start is None:
            raise ValueError(f"tail_ema needs @START, e.g. tail_ema:{arg}@0.5; {SYNTAX}")
        begin = _number(start, "START") if start is not None else 0.0
        if not 0 <= begin < 1:
            raise ValueError(f"START must be in [0, 1), got {start}; {SYNTAX}")
        return AverageSpec("ema", start=begin, every=steps, decay=decay)
    if start is not None:
        raise ValueError(f"{kind} takes no @START (its window says where it starts); {SYNTAX}")
    if kind == "swa":
        window = _number(arg, "WINDOW")
        if not 0 < window <= 1:
            raise ValueError(f"WINDOW must be in (0, 1], got {arg}; {SYNTAX}")
        return AverageSpec("swa", start=1 - window, every=steps)
    if every is None:
        raise ValueError(f"lawa needs /EVERY, e.g. lawa:{arg}/100; {SYNTAX}")
    return AverageSpec("lawa", every=steps, keep=_integer(arg, "K"))


def canonical(text: Any) -> str:
    """The canonical spelling of a `train.average` value ("off" for none)."""
    spec = parse(text)
    return "off" if spec is None else spec.text


class WeightAverage:
    """The average of `model`'s parameters under `spec`, kept as one tensor per parameter.

    Each averaged tensor has its parameter's layout: a plain tensor in one process and under
    DDP (the same on every rank), this rank's shard (a DTensor) under FSDP2. Every update is
    elementwise, so a sharded average is the one-process average cut the same way, and no
    rank ever holds a whole copy of the model (why there is no deep copy of the model: FSDP2
    refuses one, and it would hold every buffer twice).

    `update(step)` after each optimizer step; `values()` are the averaged tensors;
    `swapped_in()` puts them into the live parameters for an evaluation and the raw ones back
    (wdlab.evaluation); `state_dict()` / `load_state_dict()` carry what a resumed run needs.
    """

    def __init__(self, spec: AverageSpec, model: torch.nn.Module, steps: int) -> None:
        self.spec = spec
        self.steps = steps
        # The live parameters, held from here on: after an FSDP2 forward without backward
        # (an evaluation) model.parameters() names the gathered ones for a while.
        self.params = [p for p in model.parameters()]
        self.average = [p.detach().clone() for p in self.params]  # LAWA: unused
        self.count = 0  # updates taken (LAWA: snapshots taken, of which the last K are kept)
        self.ring: list[list[torch.Tensor]] = []

    @property
    def started(self) -> bool:
        return self.count > 0

    def update(self, step: int) -> bool:
        """Take the parameters after 1-based `step` if the spec says so; whether it did."""
        if not self.spec.due(step, self.steps):
            return False
        import torch

        current = [p.detach() for p in self.params]  # detached: no autograd here
        if self.spec.kind == "lawa":
            self.ring.append([p.clone() for p in current])
            del self.ring[: -self.spec.keep]  # type: ignore[misc]
        elif self.count == 0:
            for a, p in zip(self.average, current, strict=True):
                a.copy_(p)
        else:
            weight = 1 - self.spec.decay if self.spec.kind == "ema" else 1 / (self.count + 1)
            pairs = [(_local(a), _local(p)) for a, p in zip(self.average, current, strict=True)
                     if a.is_floating_point()]
            if pairs:
                torch._foreach_lerp_([a for a, _ in pairs], [p for _, p in pairs], weight)
        self.count += 1
        return True

    def values(self) -> list[torch.Tensor]:
        """The averaged tensors, in the order of model.parameters() (LAWA: the window's mean,
        computed here; before any update, the parameters as they were at construction)."""
        if self.spec.kind != "lawa" or not self.ring:
            return self.average
        out = []
        for i in range(len(self.params)):
            total = self.ring[0][i].clone()
            for snapshot in self.ring[1:]:
                total.add_(snapshot[i])
            out.append(total.div_(len(self.ring)))
        return out

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The live parameters hold the average inside the block and exactly their own values
        after it. Under FSDP2 the caller reshards around it (wdlab.parallel.reshard): the
        gathered copy a forward leaves behind would otherwise be used instead."""
        import torch

        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            for p, a in zip(self.params, self.values(), strict=True):
                p.detach().copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, raw in zip(self.params, saved, strict=True):
                    p.detach().copy_(raw)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the state holds (for the non-finite check before a checkpoint)."""
        if self.spec.kind == "lawa":
            return [t for snapshot in self.ring for t in snapshot]
        return self.average

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only (checkpoints load with weights_only=True); each
        tensor laid out as its parameter (wdlab.parallel shards and reshards them so)."""
        out: dict[str, Any] = {"spec": self.spec.text, "count": self.count}
        if self.spec.kind == "lawa":
            out["ring"] = [[t.clone() for t in snap] for snap in self.ring]
        else:
            out["params"] = [a.clone() for a in self.average]
        return out

    def load_state_dict(self, state: Any) -> None:
        """Restore what state_dict() wrote; ValueError naming the mismatch otherwise."""
        import torch

        if not isinstance(state, dict) or state.get("spec") != self.spec.text:
            got = state.get("spec") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"holds the average {got!r}, not {self.spec.text!r}")
        count = state.get("count")
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"has an impossible average count {count!r}")

        def fits(tensors: Any) -> bool:
            return (isinstance(tensors, list) and len(tensors) == len(self.params) and all(
                isinstance(t, torch.Tensor) and t.shape == p.shape
                and _is_dtensor(t) == _is_dtensor(p)
                for t, p in zip(tensors, self.params, strict=True)))

        def finite(tensors: list[torch.Tensor]) -> bool:
            return all(not t.is_floating_point() or bool(torch.isfinite(_local(t)).all())
                       for t in tensors)

        if self.spec.kind == "lawa":
            ring = state.get("ring")
            if not isinstance(ring, list) or len(ring) > self.spec.keep or not all(  # type: ignore[operator]
                fits(s) for s in ring
            ):
                raise ValueError("has an average window that does not fit this model")
            if not all(finite(s) for s in ring):
                raise ValueError("holds a non-finite weight average")
            self.ring = [[t.clone() for t in snap] for snap in ring]
        else:
            params = state.get("params")
            if not fits(params):
                raise ValueError("has averaged weights that do not fit this model")
            if not finite(params):
                raise ValueError("holds a non-finite weight average")
            with torch.no_grad():
                for a, t in zip(self.average, params, strict=True):
                    a.copy_(t)
        self.count = count


def _is_dtensor(t: Any) -> bool:
    return hasattr(t, "to_local") and hasattr(t, "placements")


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's piece of a DTensor (FSDP2), the tensor itself when plain."""
    return t.to_local() if _is_dtensor(t) else t


def from_config(text: str, model: torch.nn.Module, steps: int) -> WeightAverage | None:
    """The engine's average for a validated `train.average` (None for "off")."""
    spec = parse(text)
    return None if spec is None else WeightAverage(spec, model, steps)


def label(optimizer: str, average: Any) -> str:
    """How reports name a run's method: the optimizer, plus its average when one is kept."""
    try:
        text = canonical(average) if average is not None else "off"
    except ValueError:
        text = str(average)
    return optimizer if text == "off" else f"{optimizer} + {text}"
