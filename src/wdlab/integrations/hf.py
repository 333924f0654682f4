"""wdlab in Hugging Face's Trainer: wdlab's parameter groups and optimizers, and the Monitor.

    from wdlab.integrations import hf
    trainer = Trainer(model, args, train_dataset=ds,
                      optimizers=hf.optimizers(model, "adamw", lr=1e-3, weight_decay=0.1,
                                               num_training_steps=args.max_steps))
    # or: Trainer(..., optimizer_cls_and_kwargs=hf.optimizer_cls_and_kwargs(model, ...))
    hf.add_monitor(trainer, every=10, level="summary")
    trainer.train()

The groups are wdlab.param_groups' decision (classify's probe runs on a small batch from
the model's `dummy_inputs`, else from `config.vocab_size`), so e.g. Llama's RMSNorm gains are
not decayed. The Monitor's metrics go through `Trainer.log`, so the log history and every
`report_to` backend (TensorBoard, W&B, MLflow, ...) receive them. Needs
`pip install 'wdlab[hf]'`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

try:
    from transformers import TrainerCallback
except ImportError as err:  # pragma: no cover - the extra is missing
    raise ImportError(
        "wdlab.integrations.hf needs transformers: pip install 'wdlab[hf]'"
    ) from err

from wdlab import groups, optim
from wdlab.factory import create_optimizer as _create_optimizer
from wdlab.integrations._schedule import lr_scheduler
from wdlab.schedules import LRSchedule, Schedule


def probe_input(model: nn.Module) -> dict[str, torch.Tensor]:
    """A small batch for the scale-invariance probe: `model.dummy_inputs` (ids clamped to the
    vocabulary), else random input_ids of length <= 8 from `model.config.vocab_size`."""
    device = next(model.parameters()).device
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    try:
        dummy = dict(getattr(model, "dummy_inputs", None) or {})
    except Exception:  # noqa: BLE001 - some models' dummy_inputs property raises
        dummy = {}
    tensors = {k: v for k, v in dummy.items() if isinstance(v, torch.Tensor)}
    if tensors:
        if vocab and "input_ids" in tensors:
            tensors["input_ids"] = tensors["input_ids"].clamp(0, int(vocab) - 1)
        return {k: v.to(device) for k, v in tensors.items()}
    if not vocab:
        raise ValueError(
            f"{type(model).__name__} has no dummy_inputs and no config.vocab_size to build "
            "input_ids from; pass example_input=... (a dict of the model's keyword inputs)"
        )
    length = min(8, int(getattr(config, "max_position_embeddings", 8) or 8))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, int(vocab), (2, length), generator=gen)
    return {"input_ids": ids.to(device)}


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0, *,
                 example_input: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
    """wdlab.param_groups for a PreTrainedModel (the probe's batch from `probe_input`)."""
    x = example_input if example_input is not None else probe_input(model)
    return groups.param_groups(model, lr, weight_decay, example_input=x, **kwargs)


def create_optimizer(model: nn.Module, name: str = "adamw", *, lr: float,
                     weight_decay: float = 0.0, example_input: Any = None,
                     **hparams: Any) -> torch.optim.Optimizer:
    """wdlab.create_optimizer for a PreTrainedModel."""
    x = example_input if example_input is not None else probe_input(model)
    return _create_optimizer(model, name, lr=lr, weight_decay=weight_decay, example_input=x,
                             **hparams)


def optimizers(model: nn.Module, name: str = "adamw", *, lr: float,
               num_training_steps: int, weight_decay: float = 0.0, warmup_steps: int = 0,
               schedule: str | Schedule = "cosine", final_lr_fraction: float = 0.0,
               cooldown: float = 0.2, cooldown_shape: str = "linear", power: float = 2.0,
               **hparams: Any) -> tuple[torch.optim.Optimizer, LRSchedule]:
    """`Trainer(optimizers=...)`: a wdlab optimizer and the lab's schedule over
    num_training_steps, stepped per optimizer step: linear warm-up, then `schedule`
    (constant | linear | cosine | power | wsd, the fields of wdlab.schedules.Schedule; or a
    Schedule as it is) down to final_lr_fraction."""
    opt = create_optimizer(model, name, lr=lr, weight_decay=weight_decay, **hparams)
    sched = lr_scheduler(opt, num_training_steps, schedule=schedule, warmup_steps=warmup_steps,
                         final_lr_fraction=final_lr_fraction, cooldown=cooldown,
                         cooldown_shape=cooldown_shape, power=power)
    return opt, sched


def optimizer_cls_and_kwargs(model: nn.Module, name: str = "adamw", *, lr: float,
                             weight_decay: float = 0.0, example_input: Any = None,
                             decay_embedding: bool = True, decay_output: bool = True,
                             overrides: Any = None, **hparams: Any
                             ) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """`Trainer(optimizer_cls_and_kwargs=...)`: the wdlab optimizer class and its keyword
    arguments, with the wdlab groups under "params" (the Trainer uses those instead of its
    own decay/no-decay split); the Trainer then builds its own scheduler from `args`."""
    cls = optim.get(name)
    grouped = param_groups(model, lr, weight_decay, example_input=example_input,
                           decay_embedding=decay_embedding, decay_output=decay_output,
                           overrides=overrides, decay_mode=hparams.get("decay", "decoupled"))
    return cls, {"params": grouped, "lr": lr, "weight_decay": weight_decay, **hparams}


class MonitorCallback(TrainerCallback):
    """Runs wdlab's Monitor inside `Trainer.train()` and logs through `trainer.log`.

    Attach with `add_monitor(trainer, ...)` (it needs the trainer to log through). Measures
    every `every`-th optimizer step (level "light" | "full" | "summary"); the lr it reports
    is the one the step used (read before the scheduler steps).
    """

    def __init__(self, trainer: Any = None, every: int = 10, level: str = "light") -> None:
        self.trainer, self.every, self.level = trainer, every, level
        self.monitor: Any = None
        self._pending: dict[str, float] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        from wdlab.monitor import Monitor

        if self.trainer is None:
            raise ValueError("MonitorCallback needs the trainer to log through: attach it with "
                             "wdlab.integrations.hf.add_monitor(trainer, ...)")
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
        self.monitor = Monitor(model, inner, every=self.every, level=self.level,
                               sink=self._keep)

    def _keep(self, step: int, metrics: dict[str, float]) -> None:
        self._pending = dict(metrics)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.before_forward(state.global_step + 1)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.step(state.global_step + 1)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._pending is not None:  # global_step now counts the measured step
            metrics, self._pending = self._pending, None
            self.trainer.log(metrics)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None


def add_monitor(trainer: Any, every: int = 10, level: str = "light") -> MonitorCallback:
    """Attach a MonitorCallback to `trainer` (before `trainer.train()`); returns it."""
    callback = MonitorCallback(trainer, every=every, level=level)
    trainer.add_callback(callback)
    return callback
