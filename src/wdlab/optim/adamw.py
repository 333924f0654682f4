"""AdamW whose decoupled mode is torch.optim.AdamW, plus wdlab's independent and l2 modes.

State layout is torch's (state["step"] a float32 scalar tensor, "exp_avg", "exp_avg_sq"),
so state_dicts move between wdlab.optim.AdamW and torch.optim.AdamW in both directions.
amsgrad and maximize are not supported (no wdlab workload needs them); a torch state_dict
that turns them on is refused at the next step rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from wdlab.optim.base import WdOptimizer, check_betas, check_range
from wdlab.optim.functional import adamw_step


class AdamW(WdOptimizer):
    """Adam with weight decay; decay="decoupled" (default) equals torch.optim.AdamW.

    fused=None (default) runs torch's fused Adam kernels wherever they exist (CPU and GPUs),
    which is what torch.optim.AdamW(fused=True) computes bit for bit; fused=False runs the
    op-for-op copy of torch's default single-tensor path (bit for bit torch's default).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        decay: str = "decoupled",
        *,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decay=decay, fused=fused
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_betas(group["betas"])
        check_range("eps", group["eps"], 0.0)
        if group["fused"] not in (None, True, False):
            raise ValueError(f"fused must be None, True or False, got {group['fused']!r}")

    @staticmethod
    def _torch_weight_decay(group: dict[str, Any]) -> tuple[float, bool]:
        """(weight_decay, decoupled) in torch's meaning for this group's decay mode."""
        wd, decay = group["weight_decay"], group["decay"]
        if decay == "l2":
            return wd, False
        if decay == "independent":
            # lr * (wd / initial_lr) == (lr / initial_lr) * wd: the schedule multiplier times wd.
            initial_lr = group.get("initial_lr", group["lr"])
            return (wd / initial_lr if initial_lr > 0 else 0.0), True
        return wd, True

    def _check_step(self, group: dict[str, Any]) -> None:
        if group.get("amsgrad") or group.get("maximize"):
            raise ValueError(
                "wdlab AdamW supports amsgrad=False and maximize=False only; "
                "use torch.optim.AdamW for these options"
            )

    def _step_group(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        fused = group.get("fused")
        # torch keeps "step" on the param's device for its fused kernels, on the CPU otherwise.
        exp_avgs, exp_avg_sqs, steps = self._adam_states(
            params, step_device="param" if fused is not False else "cpu"
        )
        beta1, beta2 = group["betas"]
        weight_decay, decoupled = self._torch_weight_decay(group)
        adamw_step(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            steps,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=weight_decay,
            decoupled=decoupled,
            fused=fused,
        )
