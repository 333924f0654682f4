"""Muon for any model: orthogonalized momentum for hidden matrices, AdamW for the rest.

torch.optim.Muon takes only 2-D params, so every user writes the same split by hand. Here one
optimizer does the Moonlight recipe ("Muon is Scalable for LLM Training"): matrix-like params
(ndim >= 2, conv weights flattened to (out, in*k*k)) get W <- W*(1 - decay) - lr*s*NS5(M), and
vectors, embeddings and the output head (group role "embedding"/"output", set by wdlab.groups)
get AdamW with betas (0.9, 0.95) at the same lr and the same decay mode; with
update_scale="match_rms_adamw" both updates have RMS about 0.2*lr, so one lr serves both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from wdlab.optim._dispatch import choose, impl_from, matmul_dtype, pick
from wdlab.optim.base import (
    AdamColumns,
    WdOptimizer,
    check_betas,
    check_bool,
    check_choice,
    check_range,
    decay_factors,
    group_lr,
)
from wdlab.optim.distributed import plan_owners, rank_and_world, settled
from wdlab.optim.functional.muon import (
    NS_COEFFICIENTS,
    UPDATE_SCALES,
    MuonSettings,
    NsCoefficients,
    Split,
    check_ns_coefficients,
    muon_foreach,
    muon_step,
    normuon_state_like,
    parse_split,
)

NS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ADAMW_ROLES = ("embedding", "output")
WORK_SPLITS = ("auto", "replicated")


def _as_ns_dtype(value: Any) -> torch.dtype | str:
    """torch.float32 / torch.bfloat16, their names, or "auto" (_dispatch.matmul_dtype's choice
    per device); anything else is a ValueError."""
    if value == "auto":
        return value
    if isinstance(value, str) and value in NS_DTYPES:
        return NS_DTYPES[value]
    if value in NS_DTYPES.values():
        return value
    raise ValueError(
        "ns_dtype must be torch.float32 or torch.bfloat16 (or 'float32'/'bfloat16'/'auto'), "
        f"got {value!r}"
    )


class Muon(WdOptimizer):
    """Muon with an AdamW fallback; `decay` is "decoupled" | "independent" | "l2".

    Which update a param gets: the group key "use_muon" (bool) if present, else Muon for
    ndim >= 2 unless the group's "role" is "embedding" or "output".

    Muon params, like torch.optim.Muon: buf <- lerp(buf, g, 1 - momentum); M = lerp(g, buf,
    momentum) with Nesterov else buf; O = NS5(M) on M/max(||M||_F, eps), transposed when
    rows > cols; W <- W*(1 - c) - lr*s*O with c the decay rate computed from the plain lr,
    s = 0.2*sqrt(max(A, B)) ("match_rms_adamw") or sqrt(max(1, A/B)) ("original").
    ns_dtype="auto" (default) runs Newton-Schulz in bfloat16 where its matmuls are fast (GPUs,
    CPUs with AVX512-BF16/AMX; then it is torch.optim.Muon's computation bit for bit) and in
    float32 elsewhere (a CPU without bf16 dot products emulates them: 100x slower, measured in
    docs/performance.md). float32 stays within ~2e-6 of a float64 iteration, bfloat16 only
    within ~2e-2. impl="foreach" (auto off the CPU) batches Newton-Schulz over same-shape
    matrices (torch.bmm) and runs the AdamW part with torch._foreach_* ops.

    ns_coefficients: "jordan" (the fixed (3.4445, -4.7750, 2.0315), the default), "polar_express"
    (one minimax quintic per iteration, Amsel et al. 2025: singular values much closer to 1
    in the same ns_steps), one (a, b, c) or a list of them (one per iteration).
    normuon=True (Li et al. 2025, NorMuon): after orthogonalization each row (neuron) is
    divided by sqrt of an EMA (normuon_beta2) of its mean squared update, then the update is
    rescaled to its Frobenius norm before (state "normuon_v", one number per row).
    Per-parameter split (group key "muon_split", or a `muon_split` attribute on the parameter,
    which wins): "batch" orthogonalizes each matrix of an [E, m, n] (expert) tensor; "rows:K"
    / "cols:K" / "rows:s1,s2,..." cut the matrix into blocks orthogonalized one by one (fused
    QKV: "rows:3"; per head: "rows:n_head" on W_q, W_k, W_v, "cols:n_head" on W_o), each
    scaled by update_scale as a matrix of its own shape.
    Distributed: FSDP2 (DTensor) matrices are each orthogonalized once, on one owner rank
    (shards gathered there, rows scattered back; state stays sharded). Under DDP pass
    work_split="replicated" to do the same with replicas (the owner computes, broadcasts);
    the default "auto" lets every process compute its own plain tensors (always safe).

    AdamW params: wdlab's shared AdamW step (torch's fused kernel where it runs, i.e.
    torch.optim.AdamW(fused=True) bit for bit) with adamw_betas and adamw_eps.
    State: "momentum_buffer" (torch Muon's name) or "step"/"exp_avg"/"exp_avg_sq" (torch
    AdamW's), so torch's state_dicts load for the params they cover.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: NsCoefficients = NS_COEFFICIENTS,
        eps: float = 1e-7,
        weight_decay: float = 0.1,
        decay: str = "decoupled",
        update_scale: str = "match_rms_adamw",
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        ns_dtype: torch.dtype | str = "auto",
        *,
        normuon: bool = False,
        normuon_beta2: float = 0.95,
        normuon_eps: float = 1e-8,
        work_split: str = "auto",
        decay_to: str = "zero",
        decay_ema: float = 0.999,
        impl: str = "auto",
    ) -> None:
        defaults = dict(
            impl=impl_from(impl, owner="Muon"),
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            ns_coefficients=tuple(ns_coefficients)
            if isinstance(ns_coefficients, (list, tuple))
            else ns_coefficients,
            eps=eps,
            weight_decay=weight_decay,
            decay=decay,
            decay_to=decay_to,
            decay_ema=decay_ema,
            update_scale=update_scale,
            adamw_betas=adamw_betas,
            adamw_eps=adamw_eps,
            ns_dtype=_as_ns_dtype(ns_dtype),
            normuon=normuon,
            normuon_beta2=normuon_beta2,
            normuon_eps=normuon_eps,
            work_split=work_split,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_range("momentum", group["momentum"], 0.0, 1.0)
        check_bool(group, "nesterov")
        steps = group["ns_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps < 100:
            raise ValueError(f"ns_steps must be an integer in [1, 100), got {steps!r}")
        coefs = group["ns_coefficients"]
        check_ns_coefficients(coefs)
        if isinstance(coefs, list):  # hashable and stable in a state_dict
            group["ns_coefficients"] = coefs = tuple(
                tuple(c) if isinstance(c, list) else c for c in coefs)
        check_bool(group, "normuon")
        check_range("normuon_beta2", group["normuon_beta2"], 0.0, 1.0)
        check_range("normuon_eps", group["normuon_eps"], 0.0)
        check_choice("work_split", group["work_split"], WORK_SPLITS)
        check_range("eps", group["eps"], 0.0, low_open=True)
        check_choice("update_scale", group["update_scale"], UPDATE_SCALES)
        check_betas(group["adamw_betas"], "adamw_betas")
        check_range("adamw_eps", group["adamw_eps"], 0.0)
        group["ns_dtype"] = _as_ns_dtype(group["ns_dtype"])
        flag = group.get("use_muon")
        if flag is not None and not isinstance(flag, bool):
            raise ValueError(f"use_muon must be True, False or absent, got {flag!r}")
        if flag:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(
                        f"use_muon=True needs parameters with ndim >= 2, got shape "
                        f"{tuple(p.shape)}; leave use_muon unset to send it to AdamW"
                    )
        for p in group["params"]:
            if self.uses_muon(p, group):
                self.split_of(p, group)  # a split that does not fit the shape fails here

    @staticmethod
    def split_of(param: torch.Tensor, group: dict[str, Any]) -> Split | None:
        """How `param` is cut for Newton-Schulz: its `muon_split` attribute, else the group's
        "muon_split" key, else None (the whole (size(0), -1) matrix)."""
        value = getattr(param, "muon_split", None)
        if value is None:
            value = group.get("muon_split")
        return parse_split(value, param.shape)

    @staticmethod
    def uses_muon(param: torch.Tensor, group: dict[str, Any]) -> bool:
        """Whether `param` in `group` gets the orthogonalized update (else AdamW)."""
        flag = group.get("use_muon")
        if flag is not None:
            return bool(flag)
        return param.ndim >= 2 and group.get("role") not in ADAMW_ROLES

    def _step_group(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        muon_p: list[torch.Tensor] = []
        muon_g: list[torch.Tensor] = []
        bufs: list[torch.Tensor] = []
        splits: list[Split | None] = []
        row_sqs: list[torch.Tensor] = []
        adam: AdamColumns = ([], [], [], [], [])
        for p, g in zip(params, grads, strict=True):
            if self.uses_muon(p, group):
                muon_p.append(p)
                muon_g.append(g)
                bufs.append(self._buffer(p))
                splits.append(self.split_of(p, group))
                if group["normuon"]:
                    row_sqs.append(self._row_sq(p, splits[-1]))
            else:
                self._add_to_adamw(adam, p, g)
        decay = decay_factors(group)
        for impl, idx in choose(group, [muon_p], None) if muon_p else []:
            ps = pick(muon_p, idx)
            ns_dtype = group["ns_dtype"]
            settings = MuonSettings(
                lr=group_lr(group),
                momentum=group["momentum"],
                nesterov=group["nesterov"],
                ns_steps=group["ns_steps"],
                ns_coefficients=group["ns_coefficients"],
                eps=group["eps"],
                update_scale=group["update_scale"],
                ns_dtype=matmul_dtype(ps[0].device) if ns_dtype == "auto" else ns_dtype,
                decay_rate=decay.rate,
                l2=decay.l2,
                normuon_beta2=group["normuon_beta2"],
                normuon_eps=group["normuon_eps"],
            )
            columns = (ps, pick(muon_g, idx), pick(bufs, idx), settings)
            per_param: dict[str, Any] = dict(
                splits=pick(splits, idx),
                row_sqs=pick(row_sqs, idx) if group["normuon"] else None,
            )
            if impl == "foreach":
                muon_foreach(*columns, **per_param)
                continue
            plan = getattr(self, "_ns_owner", {})
            muon_step(*columns, **per_param, replicated=group["work_split"] == "replicated",
                      owners_at=[plan.get(id(p)) for p in ps])
        self._adamw_fallback(group, adam, decay.rate, decay.l2)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """WdOptimizer.step, with the owner ranks of Newton-Schulz (distributed runs) planned
        over the whole step, every group's matrices at once, not group by group."""
        params, replicated = [], []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and self.uses_muon(p, group):
                    params.append(p)
                    replicated.append(group["work_split"] == "replicated")
        self._ns_owner: dict[int, int | None] = {}
        if rank_and_world()[1] > 1:
            planned = plan_owners(params, replicated)
            self._ns_owner = {id(p): r for p, r in zip(params, planned, strict=True)}
        return super().step(closure)

    def _row_sq(self, p: torch.Tensor, split: Split | None) -> torch.Tensor:
        """p's NorMuon second moment (one per row), created on first use."""
        state = self.state[p]
        if "normuon_v" not in state:
            state["normuon_v"] = settled(normuon_state_like(p, split))
        return state["normuon_v"]


class NorMuon(Muon):
    """Muon with NorMuon's neuron-wise normalization on (normuon=True by default); every other
    option is Muon's. Its own registry name ("normuon") so `wdlab bench` can compare it."""

    def __init__(self, params: Iterable[Any], *args: Any, normuon: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(params, *args, normuon=normuon, **kwargs)


class PolarExpressMuon(Muon):
    """Muon with the Polar Express coefficients (ns_coefficients="polar_express" by default);
    registry name "muon-pe", so `wdlab bench` can compare it with "muon"."""

    def __init__(self, params: Iterable[Any], *args: Any,
                 ns_coefficients: NsCoefficients = "polar_express", **kwargs: Any) -> None:
        super().__init__(params, *args, ns_coefficients=ns_coefficients, **kwargs)
