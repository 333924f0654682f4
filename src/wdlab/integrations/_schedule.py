"""The lab's learning-rate schedule (warm-up, then cosine | linear | constant) as a torch
LambdaLR, for trainers that step a scheduler themselves."""

from __future__ import annotations

import torch

SCHEDULES = ("cosine", "linear", "constant")


def lambda_lr(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    *,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    final_lr_fraction: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR whose multiplier at step t is wdlab.train.lr_multiplier (the lab's schedule)."""
    from wdlab.train import lr_multiplier

    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer; got {total_steps!r}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(step, total_steps, schedule, warmup_steps, final_lr_fraction),
    )
