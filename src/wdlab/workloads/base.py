"""What a workload is: model factory, deterministic data, loss, evaluation metric and target.

Data is a pure function of (seed, step): `batch(step)` returns the same tensors whenever
it is called, so a resumed run needs only the step to continue the data stream exactly.
"""

from __future__ import annotations

import abc
import functools
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

Batch = tuple[torch.Tensor, ...]


def epoch_indices(n: int, batch_size: int, seed: int, step: int, stream: int) -> torch.Tensor:
    """Indices of the minibatch for `step`: a fresh permutation of n examples every epoch,
    seeded by (seed, epoch, stream), sliced by the step's position in the epoch. The last
    incomplete batch of an epoch is dropped, so every batch has batch_size examples."""
    epoch, position = divmod(step, n // batch_size)
    order = _permutation(n, seed, epoch, stream)
    return order[position * batch_size : (position + 1) * batch_size].clone()


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int, stream: int) -> torch.Tensor:
    """One epoch's order, drawn once: drawing it at every step (a generator and a
    permutation of n) cost a 3000-step teacher trial ~5% of its training time."""
    return torch.from_numpy(np.random.default_rng([seed, epoch, stream]).permutation(n))


class Section(BaseModel):
    """Base for workload config sections: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Workload(abc.ABC):
    """One training task. Subclasses set the class attributes and implement the methods.

    This is also the API for a user's own workload (docs/workloads.md): subclass it in your
    module and run it as `wdlab run package.module:ClassName`, or build one from plain torch
    pieces with `wdlab.workloads.from_torch(...)`. Required: `metric`, `higher_is_better`,
    recipe(), build_model(), batch(step), loss(model, batch), evaluate(model), data_hash().
    Optional: ModelConfig / DataConfig (pydantic Sections: the `--set model.*` / `data.*`
    settings, passed to __init__), example_input(), width (for optimizer.scaling).
    """

    name: ClassVar[str]  # defaults to the class name
    metric: ClassVar[str]  # name of the evaluation metric that the target applies to
    higher_is_better: ClassVar[bool]
    ModelConfig: ClassVar[type[Section]] = Section  # no model.* settings unless declared
    DataConfig: ClassVar[type[Section]] = Section

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__ and not hasattr(cls, "name"):
            cls.name = cls.__name__

    def __init__(self, model: Section, data: Section, seed: int) -> None:
        self.model_config = model
        self.data_config = data
        self.seed = seed

    @classmethod
    @abc.abstractmethod
    def recipe(cls, tiny: bool = False) -> dict[str, Any]:
        """Default run settings, as a nested dict in the run-config layout:
        {"steps", "target", "optimizer": {...}, "schedule": {...}, "train": {...},
         "model": {...}, "data": {...}}. `tiny=True` gives the test-suite configuration
        (seconds on one core) with its own tiny target."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model; its initialization depends only on self.seed."""

    @abc.abstractmethod
    def batch(self, step: int) -> Batch:
        """Training batch for `step`, a pure function of (seed, step)."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Scalar training loss of `model` on `batch` (model in train mode)."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics (eval mode, no grad), including `self.metric` and "val_loss"."""

    @abc.abstractmethod
    def data_hash(self) -> str:
        """Hex digest identifying the data (corpus text, generated set and split)."""

    def example_input(self) -> torch.Tensor:
        """A small real input batch, for the grouping's scale-invariance probe."""
        return self.batch(0)[0][:16]

    @property
    def width(self) -> int:
        """The model's width, for width-scaling rules (override where meaningful)."""
        raise NotImplementedError(f"workload {self.name} does not declare a width")

    def reached(self, value: float, target: float) -> bool:
        return value >= target if self.higher_is_better else value <= target
