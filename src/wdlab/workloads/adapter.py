"""`from_torch`: a Workload built from plain torch pieces (a model function, a DataLoader
factory, an evaluation function), for users who would rather not subclass Workload.

The engine needs data that is a pure function of (seed, step), so that a resumed run sees
exactly the batches an uninterrupted one would. A DataLoader is a stateful stream; the
adapter makes it pure this way:

  - step s is batch number s mod L of epoch s // L, where L = len(loader);
  - each epoch's iterator is created with torch's random generator (forked, so the training
    RNG is untouched) seeded from (seed, epoch), and the loader's own `generator`, if it has
    one, reseeded from the same value: the shuffling order (RandomSampler), the DataLoader
    worker seeds and anything drawn while the iterator starts depend on (seed, epoch) only;
  - every batch is fetched with torch's generator seeded from (seed, epoch, position), so
    random augmentation done in the main process (num_workers=0) is pure too;
  - on resume, the epoch's iterator is rebuilt and the batches before the step are skipped
    (read, not trained on), so the next batch is the same one.

What it cannot see: randomness outside torch (numpy, `random`) in the dataset or transforms
— use torch's generator there — and a dataset whose content changes between runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from pydantic import create_model
from torch import nn

from wdlab.errors import WdlabError
from wdlab.workloads.base import Batch, Section, Workload

DATA_STREAM = 11  # mixed into the data seeds, so data never shares the model's stream


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: well mixed, stable across runs)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _section(name: str, options: Mapping[str, Any] | None) -> type[Section]:
    """A strict settings section whose fields (and their types) are the given defaults."""
    fields = {
        key: ((type(value) if value is not None else Any), value)
        for key, value in (options or {}).items()
    }
    return create_model(name, __base__=Section, **fields)  # type: ignore[call-overload]


def _default_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy of model(inputs) against the labels, for (inputs, labels) batches."""
    x, y = batch[0], batch[1]
    return nn.functional.cross_entropy(model(x), y)


class _Stream:
    """The loader read as a pure function of (seed, step) (see the module docstring)."""

    def __init__(self, loader: Any, seed: int, where: str) -> None:
        try:
            self.length = len(loader)
        except TypeError:
            raise WdlabError(
                f"{where}: the DataLoader has no len() (an IterableDataset?); from_torch needs a "
                "map-style dataset, or subclass wdlab.workloads.Workload and write batch(step)"
            ) from None
        if self.length < 1:
            raise WdlabError(f"{where}: the DataLoader yields no batch; give it more data")
        self.loader, self.seed = loader, seed
        self._iter: Iterator[Any] | None = None
        self._next = (-1, -1)  # (epoch, position) the iterator yields next
        self._last: tuple[int, Any] | None = None

    def _start(self, epoch: int) -> None:
        seed = _seed(self.seed, epoch, DATA_STREAM)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generator = getattr(self.loader, "generator", None)
            if isinstance(generator, torch.Generator):
                generator.manual_seed(seed)
            self._iter = iter(self.loader)
        self._next = (epoch, 0)

    def _fetch(self) -> Any:
        epoch, position = self._next
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(self.seed, epoch, position, DATA_STREAM))
            try:
                batch = next(self._iter)  # type: ignore[arg-type]
            except StopIteration:
                raise WdlabError(
                    f"the DataLoader ended after {position} of its len() = {self.length} "
                    "batches; its len() must count what it yields"
                ) from None
        self._next = (epoch, position + 1)
        return batch

    def batch(self, step: int) -> Any:
        if self._last is not None and self._last[0] == step:
            return self._last[1]
        epoch, position = divmod(step, self.length)
        if self._next != (epoch, position):
            self._start(epoch)
            for _ in range(position):  # resume mid-epoch: read (and drop) the earlier batches
                self._fetch()
        batch = self._fetch()
        batch = tuple(batch) if isinstance(batch, list) else batch
        self._last = (step, batch)
        return batch


class TorchPiecesWorkload(Workload):
    """The Workload that from_torch fills in (its pieces are class attributes)."""

    _pieces: dict[str, Any]

    def __init__(self, model: Section, data: Section, seed: int) -> None:
        super().__init__(model, data, seed)
        self._stream: _Stream | None = None

    @classmethod
    def recipe(cls, tiny: bool = False) -> dict[str, Any]:
        from wdlab.config import deep_merge

        pieces = cls._pieces
        out = deep_merge(pieces["recipe"], {})
        return deep_merge(out, pieces["tiny"]) if tiny and pieces["tiny"] else out

    def _loader_stream(self) -> _Stream:
        if self._stream is None:
            loader = self._pieces["train_data"](**self.data_config.model_dump())
            self._stream = _Stream(loader, self.seed, f"workload {self.name}")
        return self._stream

    def build_model(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self._pieces["model"](**self.model_config.model_dump())

    def batch(self, step: int) -> Batch:
        return self._loader_stream().batch(step)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self._pieces["loss"](model, batch)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        out = self._pieces["evaluate"](model)
        if isinstance(out, (int, float)) or (isinstance(out, torch.Tensor) and out.numel() == 1):
            return {self.metric: float(out)}
        return dict(out)

    def example_input(self) -> torch.Tensor:
        make = self._pieces["example_input"]
        if make is not None:
            return make()
        first = self.batch(0)
        x = first[0] if isinstance(first, (tuple, list)) else first
        return x[:16]

    def data_hash(self) -> str:
        given = self._pieces["data_hash"]
        if given is not None:
            return str(given() if callable(given) else given)
        stream = self._loader_stream()
        digest = hashlib.sha256(f"from_torch|{self.name}|{stream.length}|".encode())
        dataset = getattr(stream.loader, "dataset", None)
        if dataset is not None:
            digest.update(f"{type(dataset).__name__}|{_len(dataset)}|".encode())
        for step in (0, 1):
            for item in _tensors(stream.batch(step % stream.length)):
                digest.update(item.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    @property
    def width(self) -> int:
        option = self._pieces["width"]
        if option is None:
            raise NotImplementedError(f"workload {self.name} does not declare a width")
        return int(getattr(self.model_config, option))


def _len(obj: Any) -> int | str:
    try:
        return len(obj)
    except TypeError:
        return "?"


def _tensors(batch: Any) -> Iterable[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, (tuple, list)):
        for item in batch:
            yield from _tensors(item)
    elif isinstance(batch, Mapping):
        for key in sorted(batch):
            yield from _tensors(batch[key])


def from_torch(
    model: Callable[..., nn.Module],
    train_data: Callable[..., Iterable[Any]],
    evaluate: Callable[[nn.Module], Mapping[str, float] | float],
    *,
    metric: str,
    higher_is_better: bool,
    steps: int,
    lr: float,
    target: float | None = None,
    loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    optimizer: str = "adamw",
    weight_decay: float = 0.0,
    optimizer_options: Mapping[str, Any] | None = None,
    schedule: Mapping[str, Any] | None = None,
    eval_every: int = 100,
    train: Mapping[str, Any] | None = None,
    model_options: Mapping[str, Any] | None = None,
    data_options: Mapping[str, Any] | None = None,
    tiny: Mapping[str, Any] | None = None,
    example_input: Callable[[], torch.Tensor] | None = None,
    data_hash: str | Callable[[], str] | None = None,
    width: str | None = None,
    name: str | None = None,
) -> type[Workload]:
    """A Workload class from plain torch pieces; assign it to a module-level name and run it
    as `wdlab run your.module:Name`.

    model(**model_options) -> nn.Module (called with torch seeded by the run seed; each
      model option becomes a `--set model.KEY=VALUE` setting).
    train_data(**data_options) -> DataLoader (map-style: it must have a len()); each data
      option becomes `--set data.KEY=VALUE`. Batches are made a pure function of
      (seed, step) as this module's docstring describes.
    evaluate(model) -> {metric: value, ...} or a number (the metric), called in eval mode
      under torch.no_grad().
    metric, higher_is_better, target: what the target applies to (target None: no target).
    steps, lr, optimizer, weight_decay, optimizer_options, schedule, eval_every, train: the
      recipe (`wdlab run` defaults; every one can be overridden on the command line).
    loss(model, batch) -> scalar tensor; default cross-entropy of model(batch[0]) vs batch[1].
    tiny: settings that `--tiny` merges over the recipe (e.g. {"steps": 50}).
    example_input() -> a real input batch for the grouping probe (default: batch 0's inputs).
    data_hash: a string or function identifying the data (default: a hash of the loader's
      length and its first two batches).
    width: the model option that is the width, for optimizer.scaling.
    """
    if not callable(model) or not callable(train_data) or not callable(evaluate):
        raise TypeError("from_torch needs callables model, train_data and evaluate")
    if width is not None and width not in (model_options or {}):
        raise ValueError(f"width={width!r} must name one of model_options "
                         f"({', '.join(model_options or {}) or 'none given'})")
    recipe = {
        "steps": steps,
        "target": target,
        "optimizer": {"name": optimizer, "lr": lr, "weight_decay": weight_decay,
                      **dict(optimizer_options or {})},
        "schedule": dict(schedule or {"kind": "cosine", "warmup": 0}),
        "train": {"eval_every": eval_every, **dict(train or {})},
        "model": dict(model_options or {}),
        "data": dict(data_options or {}),
    }
    label = name or getattr(model, "__name__", "torch_workload")
    pieces = {
        "model": model,
        "train_data": train_data,
        "evaluate": evaluate,
        "loss": loss or _default_loss,
        "recipe": recipe,
        "tiny": dict(tiny or {}),
        "example_input": example_input,
        "data_hash": data_hash,
        "width": width,
    }
    attrs = {
        "name": label,
        "metric": metric,
        "higher_is_better": bool(higher_is_better),
        "ModelConfig": _section(f"{label}ModelConfig", model_options),
        "DataConfig": _section(f"{label}DataConfig", data_options),
        "_pieces": pieces,
        "__doc__": f"{label}: built by wdlab.workloads.from_torch (metric {metric}).",
    }
    return type(label, (TorchPiecesWorkload,), attrs)
