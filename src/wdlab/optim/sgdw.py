"""SGD with momentum and weight decay that means what the decay mode says.

decay="decoupled": w <- w*(1 - lr*wd), then torch.optim.SGD's momentum rule on the raw
gradient; decay="l2" is torch.optim.SGD(weight_decay=wd) bit for bit. State key
"momentum_buffer" as torch, so state_dicts move between the two.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.optimizer import required  # type: ignore[attr-defined]

from wdlab.optim import _native as native
from wdlab.optim._dispatch import FUNCTIONAL_MODE, choose, impl_from, pick
from wdlab.optim.base import WdOptimizer, check_momentum, decay_factors, group_lr
from wdlab.optim.functional import sgdw_foreach, sgdw_step


class SGDW(WdOptimizer):
    """SGD + momentum/Nesterov with decoupled, independent or l2 weight decay.

    impl="auto" (default) runs wdlab.optim._native's one-pass C kernel where it can (contiguous
    CPU float32/float64), the reference torch ops (block by block in cache) on other CPU
    tensors and "foreach" elsewhere. "native" insists on the C kernel; "compiled" uses
    torch.compile (opt-in: seconds of compile on first step). The older mode= keyword maps
    "chunked"/"whole" to "reference".
    """

    IMPLS = ("reference", "native", "foreach", "compiled")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = required,
        momentum: float = 0.9,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        decay: str = "decoupled",
        *,
        decay_to: str = "zero",
        decay_ema: float = 0.999,
        impl: str | None = None,
        mode: str | None = None,
    ) -> None:
        if lr is required:
            raise ValueError("lr is required for SGDW: pass lr=<float >= 0>, e.g. lr=0.1")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            weight_decay=weight_decay,
            decay=decay,
            decay_to=decay_to,
            decay_ema=decay_ema,
            impl=impl_from(impl, mode=mode, owner="SGDW"),
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_momentum(group)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "nesterov=True needs momentum in (0, 1) and dampening=0, got "
                f"momentum={group['momentum']!r}, dampening={group['dampening']!r}"
            )

    def _step_group(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        momentum = group["momentum"]
        # Params whose buffer is new take torch's first-step rule (buffer = gradient).
        batches: dict[bool, tuple[list, list, list]] = {True: ([], [], []), False: ([], [], [])}
        for p, g in zip(params, grads, strict=True):
            buf = None
            fresh = False
            if momentum != 0:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.empty_like(
                        p, memory_format=torch.preserve_format
                    )
                    fresh = True
            ps, gs, bs = batches[fresh]
            ps.append(p)
            gs.append(g)
            bs.append(buf)
        decay = decay_factors(group)
        hyper = dict(lr=group_lr(group), momentum=momentum, dampening=group["dampening"],
                     nesterov=group["nesterov"], decay_rate=decay.rate, l2=decay.l2)
        for fresh, (ps, gs, bs) in batches.items():
            if not ps:
                continue
            plan = choose(group, [ps, gs, bs], native.supports, native.why_unavailable,
                          callee_resolves_auto=True)
            for impl, idx in plan:
                cols = (pick(ps, idx), pick(gs, idx), pick(bs, idx))
                if impl == "foreach":
                    sgdw_foreach(*cols, fresh=fresh, **hyper)
                else:
                    sgdw_step(*cols, fresh=fresh, mode=FUNCTIONAL_MODE[impl], **hyper)
