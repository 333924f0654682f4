"""Lion (sign of an interpolated momentum) with wdlab's three decay modes.

With decoupled decay Lion solves min f(x) s.t. ||x||_inf <= 1/wd (REFERENCE.md §3): every
coordinate is pulled into [-1/wd, 1/wd]. State key "exp_avg" as lion-pytorch and
pytorch-optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from wdlab.optim.base import (
    WdOptimizer,
    check_betas,
    check_mode,
    decoupled_decay_rate,
    l2_coefficient,
)
from wdlab.optim.functional import ELEMENTWISE_MODES, lion_step


class Lion(WdOptimizer):
    """Lion: w <- w*(1 - lr*wd) - lr*sign(b1*m + (1-b1)*g); m <- b2*m + (1-b2)*g.

    mode as SGDW's: "auto" (default), "native", "chunked", "compiled", "whole".
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        decay: str = "decoupled",
        *,
        mode: str = "auto",
    ) -> None:
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, decay=decay, mode=mode)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_betas(group["betas"])
        check_mode(group, ELEMENTWISE_MODES)

    def _step_group(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        exp_avgs = [self._buffer(p, "exp_avg", torch.preserve_format) for p in params]
        beta1, beta2 = group["betas"]
        lion_step(
            params,
            grads,
            exp_avgs,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            decay_rate=decoupled_decay_rate(group),
            l2=l2_coefficient(group),
            mode=group.get("mode", "auto"),
        )
