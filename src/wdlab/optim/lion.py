"""Lion (sign of an interpolated momentum) with wdlab's three decay modes.

With decoupled decay Lion solves min f(x) s.t. ||x||_inf <= 1/wd (REFERENCE.md §3): every
coordinate is pulled into [-1/wd, 1/wd]. State key "exp_avg" as lion-pytorch and
pytorch-optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from wdlab.optim import _native as native
from wdlab.optim._dispatch import FUNCTIONAL_MODE, choose, impl_from, pick
from wdlab.optim.base import WdOptimizer, check_betas, decay_factors, group_lr
from wdlab.optim.functional import lion_foreach, lion_step


class Lion(WdOptimizer):
    """Lion: w <- w*(1 - lr*wd) - lr*sign(b1*m + (1-b1)*g); m <- b2*m + (1-b2)*g.

    impl as SGDW's: "auto" (default), "reference", "native", "foreach", "compiled" (the older
    mode= keyword is accepted: "chunked"/"whole" mean "reference").
    """

    IMPLS = ("reference", "native", "foreach", "compiled")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        decay: str = "decoupled",
        *,
        decay_to: str = "zero",
        decay_ema: float = 0.999,
        impl: str | None = None,
        mode: str | None = None,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, decay=decay,
                        decay_to=decay_to, decay_ema=decay_ema,
                        impl=impl_from(impl, mode=mode, owner="Lion"))
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_betas(group["betas"])

    def _step_group(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        exp_avgs = [self._buffer(p, "exp_avg", torch.preserve_format) for p in params]
        beta1, beta2 = group["betas"]
        decay = decay_factors(group)
        hyper = dict(lr=group_lr(group), beta1=beta1, beta2=beta2, decay_rate=decay.rate,
                     l2=decay.l2)
        plan = choose(group, [params, grads, exp_avgs], native.supports, native.why_unavailable,
                      callee_resolves_auto=True)
        for impl, idx in plan:
            cols = (pick(params, idx), pick(grads, idx), pick(exp_avgs, idx))
            if impl == "foreach":
                lion_foreach(*cols, **hyper)
            else:
                lion_step(*cols, mode=FUNCTIONAL_MODE[impl], **hyper)
