"""The lab's learning-rate schedules as a torch LRScheduler, for trainers that step a
scheduler themselves (HF's Trainer, Lightning).

One formula: the scheduler is wdlab.schedules.LRSchedule over a wdlab.schedules.Schedule, the
function `wdlab run` applies, so every kind the lab runs is available here (constant, linear,
cosine, power, and warmup-stable-decay with its linear, cosine, 1 − √x and power cooldowns).
"""

from __future__ import annotations

import torch

from wdlab.schedules import LRSchedule, Schedule


def lr_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int | None,
    *,
    schedule: str | Schedule = "cosine",
    warmup_steps: int = 0,
    final_lr_fraction: float = 0.0,
    cooldown: float = 0.2,
    cooldown_shape: str = "linear",
    power: float = 2.0,
) -> LRSchedule:
    """An LRSchedule stepped once per optimizer step: lr_t = lr · s(t) with s the Schedule
    of kind `schedule` over `total_steps` (or `schedule` itself, a Schedule, as given)."""
    if isinstance(schedule, Schedule):
        return LRSchedule(optimizer, schedule)
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer; got {total_steps!r}")
    return LRSchedule(optimizer, Schedule(
        schedule, total_steps, warmup=warmup_steps, final=final_lr_fraction,
        cooldown=cooldown, shape=cooldown_shape, power=power,
    ))
