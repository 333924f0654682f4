"""wdlab in Lightning: a `configure_optimizers` helper and the Monitor as a Callback.

    from wdlab.integrations import lightning as wl

    class Model(L.LightningModule):
        def configure_optimizers(self):
            return wl.configure_optimizers(self, "adamw", lr=1e-3, weight_decay=0.1)

    L.Trainer(max_steps=1000, callbacks=[wl.MonitorCallback(every=10)]).fit(Model())

The groups are wdlab.param_groups' decision (classify's probe runs on the module's
`example_input_array` when it has one). The Monitor's metrics go to every logger of the
Trainer (`trainer.loggers`: CSV, TensorBoard, W&B, MLflow, ...) at the measured step.
Needs `pip install 'wdlab[lightning]'`.
"""

from __future__ import annotations

from typing import Any

import torch

try:
    import lightning.pytorch as pl
except ImportError as err:  # pragma: no cover - the extra is missing
    raise ImportError(
        "wdlab.integrations.lightning needs lightning: pip install 'wdlab[lightning]'"
    ) from err

from wdlab.factory import create_optimizer
from wdlab.integrations._schedule import lr_scheduler
from wdlab.schedules import Schedule


def configure_optimizers(module: pl.LightningModule, name: str = "adamw", *, lr: float,
                         weight_decay: float = 0.0, example_input: Any = None,
                         schedule: str | Schedule | None = "cosine",
                         total_steps: int | None = None, warmup_steps: int = 0,
                         final_lr_fraction: float = 0.0, cooldown: float = 0.2,
                         cooldown_shape: str = "linear", power: float = 2.0,
                         **hparams: Any) -> Any:
    """What `LightningModule.configure_optimizers` returns: a wdlab optimizer over the
    module's wdlab groups and, unless `schedule=None`, the lab's schedule (constant | linear |
    cosine | power | wsd, the fields of wdlab.schedules.Schedule; or a Schedule as it is)
    stepped every optimizer step over `total_steps` (default: the trainer's
    estimated_stepping_batches)."""
    if example_input is None:
        example_input = getattr(module, "example_input_array", None)
    opt = create_optimizer(module, name, lr=lr, weight_decay=weight_decay,
                           example_input=example_input, **hparams)
    if schedule is None:
        return opt
    if total_steps is None and not isinstance(schedule, Schedule):
        trainer = module._trainer  # None outside fit: the property would raise
        if trainer is None:
            raise ValueError("configure_optimizers needs total_steps=... outside Trainer.fit "
                             "(or schedule=None)")
        total_steps = int(trainer.estimated_stepping_batches)
    sched = lr_scheduler(opt, total_steps, schedule=schedule, warmup_steps=warmup_steps,
                         final_lr_fraction=final_lr_fraction, cooldown=cooldown,
                         cooldown_shape=cooldown_shape, power=power)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class MonitorCallback(pl.Callback):
    """Runs wdlab's Monitor on the first optimizer of the fit, every `every`-th step.

    The measurement follows `optimizer.step()` itself (a torch step post-hook), before
    Lightning steps the scheduler, so the lr it reports is the one the step used; the
    metrics go to `trainer.loggers` in on_train_batch_end, at the measured step.
    """

    def __init__(self, every: int = 10, level: str = "light") -> None:
        self.every, self.level = every, level
        self.monitor: Any = None
        self._hook: Any = None
        self._pending: tuple[int, dict[str, float]] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from wdlab.monitor import Monitor

        optimizer = trainer.optimizers[0]
        self.monitor = Monitor(pl_module, optimizer, every=self.every, level=self.level,
                               sink=self._keep)
        self._hook = optimizer.register_step_post_hook(self._after_step)

    def _keep(self, step: int, metrics: dict[str, float]) -> None:
        self._pending = (step, dict(metrics))

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.monitor.step()  # the step given to before_forward

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if self.monitor is not None:
            self.monitor.before_forward(trainer.global_step + 1)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._pending is None:
            return
        (step, metrics), self._pending = self._pending, None
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
