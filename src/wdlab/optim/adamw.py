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

from wdlab import _compat
from wdlab.optim import _native as native
from wdlab.optim._dispatch import choose, impl_from, pick
from wdlab.optim.base import WdOptimizer, check_betas, check_range, decay_factors, group_lr
from wdlab.optim.functional import adamw_foreach, adamw_step


def _fused_ok(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused Adam kernels take these params (floating point, on a device
    torch has them for: CPU, CUDA and others)."""
    devices = _compat.fused_kernel_devices()
    return all(p.device.type in devices and p.is_floating_point() for p in params)


def _why_not_fused() -> str:
    devices = ", ".join(_compat.fused_kernel_devices()) or "no device (this torch lacks them)"
    return f"torch's fused Adam kernel needs floating-point params on one of {devices}"


class AdamW(WdOptimizer):
    """Adam with weight decay; decay="decoupled" (default) equals torch.optim.AdamW.

    impl (see wdlab.optim._dispatch): "native" runs torch's fused Adam kernel, which is
    torch.optim.AdamW(fused=True) bit for bit; "reference" is the op-for-op copy of torch's
    single-tensor path (bit for bit torch's default there); "foreach" is torch's foreach
    path with the step counter on the CPU (no host sync); "compiled" is the reference math
    torch.compile'd (opt-in: seconds of compile on the first step); "auto" (default) is
    "native" on CPU and "foreach" on other devices. The older fused=None/True/False means
    impl="auto"/"native"/"reference".
    """

    IMPLS = ("reference", "native", "foreach", "compiled")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        decay: str = "decoupled",
        *,
        decay_to: str = "zero",
        decay_ema: float = 0.999,
        impl: str | None = None,
        fused: bool | None = None,
    ) -> None:
        impl = impl_from(impl, fused=fused, owner="AdamW")
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decay=decay,
            decay_to=decay_to, decay_ema=decay_ema, impl=impl,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_betas(group["betas"])
        check_range("eps", group["eps"], 0.0)

    @staticmethod
    def _torch_weight_decay(group: dict[str, Any]) -> tuple[float, bool]:
        """(weight_decay, decoupled) in torch's meaning for this group's decay mode."""
        decay = decay_factors(group)
        return (decay.l2, False) if decay.l2 else (decay.per_lr, True)

    def _check_step(self, group: dict[str, Any]) -> None:
        if group.get("amsgrad") or group.get("maximize"):
            raise ValueError(
                "wdlab AdamW supports amsgrad=False and maximize=False only; "
                "use torch.optim.AdamW for these options"
            )

    def _step_group(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        beta1, beta2 = group["betas"]
        weight_decay, decoupled = self._torch_weight_decay(group)
        hyper = dict(lr=group_lr(group), beta1=beta1, beta2=beta2, eps=group["eps"],
                     weight_decay=weight_decay, decoupled=decoupled)
        if group["impl"] in ("auto", "native") and params[0].is_cpu:
            # The common CPU case first, without the per-device plan: run_adam checks every
            # tensor itself (torch's fused kernel's bits, one call); else the plan below.
            columns = self._adam_states(params, step_device="param")
            if native.run_adam(params, grads, *columns, **hyper):
                return
        plan = choose(group, [params], _fused_ok, _why_not_fused)
        for impl, idx in plan:
            ps, gs = pick(params, idx), pick(grads, idx)
            # torch keeps "step" on the param's device for its fused kernels, else on the CPU.
            columns = self._adam_states(ps, step_device="param" if impl == "native" else "cpu")
            if impl == "foreach":
                adamw_foreach(ps, gs, *columns, **hyper)
            else:
                adamw_step(ps, gs, *columns, fused=impl == "native", compiled=impl == "compiled",
                           **hyper)
