"""SCALE: column-normalized SGD, with momentum only on the output layer.

Glentis, Li, Han, Hong, "A Minimalist Optimizer Design for LLM Pretraining" (2025; code
OptimAI-Lab/Minimalist_LLM_Pretraining). Normalizing each gradient column does most of what
Adam's per-weight scaling does for matrices, and momentum matters most where gradient noise is
largest, the output layer; so matrices keep no state except the head's momentum buffer
(the paper reports Adam's quality at 35-45% of its total memory).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from wdlab.optim import _native as native
from wdlab.optim._dispatch import FUNCTIONAL_MODE, choose, impl_from, pick
from wdlab.optim.base import (
    AdamColumns,
    WdOptimizer,
    check_betas,
    check_range,
    decay_factors,
    group_lr,
)
from wdlab.optim.functional import scale_foreach, scale_step

ADAMW_ROLES = ("vector", "bias")


class SCALE(WdOptimizer):
    """SCALE with wdlab's decay modes; needs param groups that carry wdlab's "role".

    Which update a param gets (from its group's "role", set by wdlab.param_groups):
      "output" (ndim >= 2)   buf <- lerp(buf, g, 1 - momentum); w <- w*(1 - c) - lr*N(buf)
      "matrix" (ndim >= 2)   w <- w*(1 - c) - lr*N(g)             (no state at all)
      "embedding"            as "matrix", N per column of the (num, dim) table
      "vector", "bias", and anything with ndim < 2: AdamW (adamw_betas, adamw_eps), same lr
    N(D) divides D by its RMS along the input dimension, i.e. per output neuron: each row of a
    torch (out, in) weight (conv weights as (out, in*k*k)); for an embedding table, each of its
    dim columns over the vocabulary. That is the paper's "column" normalization written in
    torch's (out, in) layout, and what the authors' code does (RMS clamped at eps, so every row
    of N(D) has RMS 1 and the lr is on Adam's scale). The momentum buffer is an EMA as in their
    code. Decay, as the authors' code: "decoupled" c = lr*wd before the step; "independent"
    c = (lr/initial_lr)*wd; "l2" adds wd*w to g before momentum and normalization.
    Groups without a "role" key are refused (ValueError): without it the output layer, which
    alone gets momentum, is unknown; use wdlab.param_groups or wdlab.create_optimizer.
    State: "momentum_buffer" (torch SGD's name) for the output layer; "step", "exp_avg",
    "exp_avg_sq" (torch AdamW's) for the AdamW params. impl: "auto" (default), "reference",
    "native" or "foreach", as NovoGrad's (mode= is the older keyword).
    """

    IMPLS = ("reference", "native", "foreach")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        decay: str = "decoupled",
        eps: float = 1e-8,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        *,
        decay_to: str = "zero",
        decay_ema: float = 0.999,
        impl: str | None = None,
        mode: str | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            decay=decay,
            decay_to=decay_to,
            decay_ema=decay_ema,
            eps=eps,
            adamw_betas=adamw_betas,
            adamw_eps=adamw_eps,
            impl=impl_from(impl, mode=mode, owner="SCALE"),
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_range("momentum", group["momentum"], 0.0, 1.0)
        check_range("eps", group["eps"], 0.0, low_open=True)
        check_betas(group["adamw_betas"], "adamw_betas")
        check_range("adamw_eps", group["adamw_eps"], 0.0)
        if "role" not in group:
            raise ValueError(
                "SCALE needs param groups with a 'role' key (matrix, embedding, output, "
                "vector, bias) to find the output layer; pass wdlab.param_groups(model, ...) "
                "or use wdlab.create_optimizer(model, 'scale', ...)"
            )

    @staticmethod
    def update_of(param: torch.Tensor, group: dict[str, Any]) -> str:
        """ "output", "matrix", "embedding" (normalized updates) or "adamw" for this param."""
        role = group.get("role")
        if param.ndim < 2 or role in ADAMW_ROLES:
            return "adamw"
        return role if role in ("output", "embedding") else "matrix"

    def _step_group(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        norm_p: list[torch.Tensor] = []
        norm_g: list[torch.Tensor] = []
        bufs: list[torch.Tensor | None] = []
        dims: list[int] = []
        adam: AdamColumns = ([], [], [], [], [])
        for p, g in zip(params, grads, strict=True):
            kind = self.update_of(p, group)
            if kind == "adamw":
                self._add_to_adamw(adam, p, g)
                continue
            if kind == "output":
                bufs.append(self._buffer(p))
            else:
                self.state.setdefault(p, {})  # no state, but an (empty) entry, as torch SGD
                bufs.append(None)
            norm_p.append(p)
            norm_g.append(g)
            dims.append(0 if kind == "embedding" else 1)
        decay = decay_factors(group)
        hyper = dict(lr=group_lr(group), momentum=group["momentum"], eps=group["eps"],
                     decay_rate=decay.rate, l2=decay.l2)
        if norm_p:
            plan = choose(group, [norm_p, norm_g, bufs], native.supports,
                          native.why_unavailable, callee_resolves_auto=True)
            for impl, idx in plan:
                cols = [pick(c, idx) for c in (norm_p, norm_g, bufs, dims)]
                if impl == "foreach":
                    scale_foreach(*cols, **hyper)
                else:
                    scale_step(*cols, mode=FUNCTIONAL_MODE[impl], **hyper)
        self._adamw_fallback(group, adam, decay.rate, decay.l2)
