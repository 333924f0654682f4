"""FAdam: Adam read as natural-gradient descent with the diagonal empirical Fisher.

Hwang, "FAdam: Adam is a natural gradient optimizer using diagonal empirical Fisher
information" (2024). The changes to Adam that follow from that reading: momentum averages the
natural gradient g/sqrt(f) (not g), the Fisher EMA is bias-corrected through its coefficient,
epsilon shrinks with the gradient's RMS, the natural gradient is RMS-clipped, and the weight
decay term is itself a natural gradient (w divided by the Fisher), clipped the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from wdlab.optim import _native as native
from wdlab.optim._dispatch import FUNCTIONAL_MODE, choose, impl_from, pick
from wdlab.optim.base import WdOptimizer, check_betas, check_range, decay_factors, group_lr
from wdlab.optim.functional import fadam_foreach, fadam_step


class FAdam(WdOptimizer):
    """FAdam (the paper's Algorithm 1) with wdlab's decay modes.

    Per tensor, at step t:
      b2_t  = b2*(1 - b2^(t-1))/(1 - b2^t)         f starts at 0, so f_1 = g_1^2 and f_t equals
      f_t   = b2_t*f + (1 - b2_t)*g^2                Adam's bias-corrected second moment
      eps_t = eps*min(1, RMS(g))                   adaptive epsilon (eps if g is all zero)
      den   = f_t^p + eps_t
      g_nat = (g/den) / max(1, RMS(g/den)/clip)
      m_t   = b1*m + (1 - b1)*g_nat                no bias correction of m (as the paper)
      w_nat = (w/den) / max(1, RMS(w/den)/clip)
      w_t   = w - c*w_nat - lr*m_t
    Decay modes (chosen here; the paper has only the first): "decoupled" c = lr*wd (the
    paper's w - lr*(m + wd*w_nat)), "independent" c = (lr/initial_lr)*wd, "l2" adds wd*w to g
    and drops the w_nat term. So wd is a coefficient on a Fisher-preconditioned decay, not a
    fraction of w removed per step: weights with a large Fisher decay less.
    Choices where public versions differ: eps_t = eps*min(1, RMS(g)) with one constant (other
    ports use min(eps, eps2*RMS(g)) with a second one), and the clip divisor max(1, RMS/clip).
    Defaults are the paper's: lr 1e-3, betas (0.9, 0.999), eps 1e-8, clip 1, p 0.5, wd 0.1.
    State: "step" (float32 0-d), "momentum" and "fim" (like p), pytorch-optimizer's names.
    impl: "auto" (default), "reference", "native", "foreach" or "compiled", as NovoGrad's
    (mode= is the older keyword).
    """

    IMPLS = ("reference", "native", "foreach", "compiled")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        decay: str = "decoupled",
        clip: float = 1.0,
        p: float = 0.5,
        *,
        decay_to: str = "zero",
        decay_ema: float = 0.999,
        impl: str | None = None,
        mode: str | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decay=decay,
            decay_to=decay_to,
            decay_ema=decay_ema,
            clip=clip,
            p=p,
            impl=impl_from(impl, mode=mode, owner="FAdam"),
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_betas(group["betas"])
        check_range("eps", group["eps"], 0.0, low_open=True)
        check_range("clip", group["clip"], 0.0, low_open=True)
        check_range("p", group["p"], 0.0, 1.0, low_open=True, high_open=False)

    def _step_group(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        momenta, fims, steps = self._adam_states(params, ("momentum", "fim"))
        beta1, beta2 = group["betas"]
        decay = decay_factors(group)
        hyper = dict(lr=group_lr(group), beta1=beta1, beta2=beta2, eps=group["eps"],
                     clip=group["clip"], power=group["p"], decay_rate=decay.rate, l2=decay.l2)
        plan = choose(group, [params, grads, momenta, fims], native.supports,
                      native.why_unavailable,
                      callee_resolves_auto=True)
        for impl, idx in plan:
            cols = [pick(c, idx) for c in (params, grads, momenta, fims, steps)]
            if impl == "foreach":
                fadam_foreach(*cols, **hyper)
            else:
                fadam_step(*cols, mode=FUNCTIONAL_MODE[impl], **hyper)
