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

from wdlab.optim.base import (
    WdOptimizer,
    check_mode,
    check_momentum,
    decoupled_decay_rate,
    l2_coefficient,
)
from wdlab.optim.functional import ELEMENTWISE_MODES, sgdw_step


class SGDW(WdOptimizer):
    """SGD + momentum/Nesterov with decoupled, independent or l2 weight decay.

    mode="auto" (default) runs wdlab.optim.native's one-pass C kernel where it can (contiguous
    CPU float32/float64), else "chunked": torch ops block by block in cache. "native" insists on
    the C kernel; "compiled" uses torch.compile (opt-in: seconds of compile on first step);
    "whole" is the plain path.
    """

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
        mode: str = "auto",
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
            mode=mode,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_momentum(group)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "nesterov=True needs momentum in (0, 1) and dampening=0, got "
                f"momentum={group['momentum']!r}, dampening={group['dampening']!r}"
            )
        check_mode(group, ELEMENTWISE_MODES)

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
        for fresh, (ps, gs, bs) in batches.items():
            if not ps:
                continue
            sgdw_step(
                ps,
                gs,
                bs,
                lr=group["lr"],
                momentum=momentum,
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                decay_rate=decoupled_decay_rate(group),
                l2=l2_coefficient(group),
                fresh=fresh,
                mode=group.get("mode", "auto"),
            )
