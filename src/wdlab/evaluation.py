"""What the engine evaluates: the raw weights, their average (wdlab.averaging) and, for
Schedule-Free optimizers, the x-point instead of the y-point the gradients are taken at.

    raw      val_* metrics of the model's weights; with a Schedule-Free optimizer the engine
             swaps to its x (optimizer.eval()) for the evaluation and back (optimizer.train())
    average  avg_val_* metrics of the averaged weights (train.average); before the average's
             first update they are the raw weights' metrics

BatchNorm: running statistics collected at other weights do not fit the evaluated ones (the
averaged weights, the Schedule-Free x), so they are recomputed from `bn_batches` training
batches, the last ones before the step (deterministic: batch(step) is a pure function), with a
cumulative mean as torch.optim.swa_utils.update_bn does. The live model's statistics are put
back afterwards, so evaluating changes nothing in the training state (resume stays exact).

The averaged weights are evaluated in the live model (swapped in, then the raw ones put back),
so the same code serves one process, DDP replicas and FSDP2 shards. Under FSDP2 every
evaluation ends with a reshard: a forward without backward leaves the gathered weights in
place, and the next forward would use them instead of what the shards hold by then.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from wdlab import parallel
from wdlab.averaging import WeightAverage
from wdlab.optim.schedule_free import swap_to

AVG_PREFIX = "avg_"


def batchnorms(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_bn(model: torch.nn.Module, workload: Any, steps: list[int]) -> None:
    """BatchNorm running statistics of `model` as the plain mean over the training batches of
    `steps` (update_bn's rule: reset, momentum None, forward in train mode)."""
    norms = batchnorms(model)
    if not norms or not steps:
        return
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for step in steps:
            workload.loss(model, workload.batch(step))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


@contextmanager
def bn_kept(model: torch.nn.Module) -> Iterator[None]:
    """Put `model`'s BatchNorm buffers back as they were on leaving."""
    saved = [(b, b.clone()) for m in batchnorms(model) for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def bn_steps(step: int, n: int) -> list[int]:
    """The training batches BatchNorm statistics are recomputed from at `step`: the last n
    (the first n before step n)."""
    first = max(0, step - n)
    return list(range(first, first + n))


class Evaluator:
    """Evaluates what train.* asks for at a step and names the metric the target is read on.

    raw: whether the raw weights are evaluated too ("beside"; False: "instead").
    target_weights: "raw" or "average" ("auto" resolved by the caller).
    """

    def __init__(
        self,
        workload: Any,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        average: WeightAverage | None,
        *,
        raw: bool = True,
        target_weights: str = "raw",
        bn_batches: int = 8,
    ) -> None:
        self.workload, self.model = workload, model
        self.optimizer, self.average = optimizer, average
        self.raw = raw or average is None
        self.bn_batches = bn_batches
        on_average = average is not None and target_weights == "average"
        self.metric = (AVG_PREFIX if on_average else "") + workload.metric

    def _run(self, model: torch.nn.Module) -> dict[str, float]:
        model.eval()
        try:
            with torch.no_grad():
                metrics = self.workload.evaluate(model)
        finally:
            model.train()
            parallel.reshard(model)  # FSDP2: drop the gathered weights this forward left
        return {k: float(v) for k, v in metrics.items()}

    def _raw(self, step: int) -> dict[str, float]:
        swapped = swap_to(self.optimizer, "eval")  # Schedule-Free: evaluate x, not y
        try:
            if not swapped or not self.bn_batches or not batchnorms(self.model):
                return self._run(self.model)
            with bn_kept(self.model):
                recompute_bn(self.model, self.workload, bn_steps(step, self.bn_batches))
                return self._run(self.model)
        finally:
            if swapped:
                swap_to(self.optimizer, "train")

    def _averaged(self, step: int) -> dict[str, float]:
        """The live model evaluated with the averaged parameters swapped in (its own buffers,
        BatchNorm's recomputed for them); parameters and buffers are put back exactly."""
        assert self.average is not None
        with self.average.swapped_in(), bn_kept(self.model):
            if self.bn_batches:
                recompute_bn(self.model, self.workload, bn_steps(step, self.bn_batches))
            return self._run(self.model)

    def __call__(self, step: int) -> dict[str, float]:
        """The metrics at `step`: raw ones under their names, averaged ones as avg_*."""
        average = self.average
        if average is None:
            return self._raw(step)
        out: dict[str, float] = {}
        raw = self._raw(step) if self.raw or not average.started else {}
        averaged = self._averaged(step) if average.started else dict(raw)
        if self.raw:
            out.update(raw)
        out.update({AVG_PREFIX + k: v for k, v in averaged.items()})
        return out
