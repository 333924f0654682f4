"""Monitor: live diagnostics of the training dynamics, written to a sink every N steps.

Use:
    monitor = Monitor(model, optimizer, every=10, sink=lambda step, m: store.log_metrics(...))
    for step in range(1, steps + 1):
        monitor.before_forward(step)     # optional but needed for attention stats on step 1
        loss = ...; loss.backward(); optimizer.step()
        monitor.step(step)               # before scheduler.step(): it reads the lr just used
        optimizer.zero_grad()

A step s is measured when s % every == 0. The weights before a measured step are copied
at the end of the previous step (or in before_forward), so unmeasured steps cost a flag
check, and a measured step makes one host sync for all its scalars.

Metric names (all start with "mon/"):
  mon/<probe>/<param name>        one parameter tensor, e.g. mon/angle/blocks.0.attn.qkv.weight
  mon/<probe>/role:<role>         mean over the tensors of that role that have the probe
                                  (matrix | embedding | output | vector | bias);
  mon/<probe>/role:si             mean over all scale-invariant tensors
  mon/<probe>/layer:<k>           mean over the tensors whose name has block index k
  mon/attn_entropy/layer:<k>      attention entropy (nats), mean over heads, k-th attention
  mon/attn_max_logit/layer:<k>    largest attention logit over heads
  mon/attn_entropy/layer:<k>/head:<h>, mon/attn_max_logit/layer:<k>/head:<h>   (full)
  mon/qk_clip_max_logit/layer:<k>, mon/qk_clip_clipped/layer:<k>   QK-Clip (model.qk_clip > 0):
                                  the step's max logit before clipping, heads rescaled
  mon/logz_mean, mon/logz_max, mon/logit_max   output logits of the measured forward
Per-tensor probes: w_norm, grad_norm, upd_norm, upd_ratio, angle (radians), eff_lr
(scale-invariant only), angle_pred, angle_ratio, norm_pred, norm_ratio (scale-invariant
tensors under an optimizer equilibrium.py can predict), gw (‖g‖/‖w‖, scale-invariant only),
gw_pred and gw_ratio (its steady state under SGD-type updates: sqrt(2λ/η_t) for decoupled,
sqrt(2λ/η_max) for corrected decay; equilibrium.predicted_grad_ratio), lion_bound (Lion:
max|w|·λ);
in "full" also angle_row, upd_radial, upd_tangential, sigma_max.

Level "summary" (for hosted loggers, where every metric name is a chart): the "light"
probes, reported only as aggregates over tensors (wdlab.monitor.summary has the names and
the count: 37 for a 12-layer GPT under AdamW, where "light" gives 573).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wdlab.monitor import equilibrium, probes, summary
from wdlab.optim import distributed

LEVELS = ("light", "full", "summary")
Sink = Callable[[int, dict[str, float]], Any]

# probes summarized per role (and per layer for the first four)
_LAYER_SUMMARY = ("angle", "w_norm", "upd_ratio", "eff_lr")
_ROLE_SUMMARY = _LAYER_SUMMARY + (
    "grad_norm",
    "upd_norm",
    "angle_row",
    "angle_pred",
    "angle_ratio",
    "norm_pred",
    "norm_ratio",
    "gw",
    "gw_pred",
    "gw_ratio",
    "sigma_max",
)
_LAYER_RE = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


@dataclass
class _Tracked:
    name: str
    param: torch.Tensor
    group: int
    role: str
    scale_invariant: bool
    layer: int | None


class Monitor:
    """Measures the probes on every `every`-th step and hands them to `sink(step, metrics)`.

    Works with any torch optimizer. Roles and scale invariance come from `infos`
    (wdlab.groups.ParamInfo), else from the "role"/"scale_invariant" keys of the
    optimizer's param groups, else ndim ≥ 2 → matrix, otherwise vector, not scale-invariant.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        every: int = 10,
        sink: Sink | None = None,
        level: str = "light",
        infos: Sequence[Any] | None = None,
        output_logits: bool = True,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(
                f"every must be a positive integer (steps between probes); got {every!r}"
            )
        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}; got {level!r}")
        self.model, self.optimizer, self.every, self.sink, self.level = (
            model,
            optimizer,
            every,
            sink,
            level,
        )
        self.latest: dict[str, float] = {}
        self._tracked = self._track(infos)
        self._snapshot: list[torch.Tensor] | None = None
        self._snapshot_step: int | None = None
        self._armed = False
        self._t = 0
        self._pending: int | None = None
        self._sigma_v: dict[int, torch.Tensor] = {}
        self._gen = torch.Generator().manual_seed(0)  # never touch the training RNG
        self._attn = [
            m
            for m in model.modules()
            if hasattr(m, "record_stats") or isinstance(m, nn.MultiheadAttention)
        ]
        self._mha_stats: dict[int, torch.Tensor] = {}
        self._mha_wanted: dict[int, bool] = {}
        self._logits: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._hooks: list[Any] = []
        for k, m in enumerate(self._attn):
            if isinstance(m, nn.MultiheadAttention):
                self._hooks.append(m.register_forward_pre_hook(self._mha_pre(k), with_kwargs=True))
                self._hooks.append(m.register_forward_hook(self._mha_post(k)))
        if output_logits:
            self._hooks.append(model.register_forward_hook(self._logits_hook))

    # ---- which parameter is what ---------------------------------------------------------

    def _track(self, infos: Sequence[Any] | None) -> list[_Tracked]:
        names = {id(p): n for n, p in _unwrapped(self.model).named_parameters()}
        by_name = {i.name: i for i in infos} if infos else {}
        tracked: list[_Tracked] = []
        for gi, group in enumerate(self.optimizer.param_groups):
            group_names = group.get("param_names")
            for j, p in enumerate(group["params"]):
                name = names.get(id(p))
                if (
                    name is None
                    and group_names is not None
                    and len(group_names) == len(group["params"])
                ):
                    name = group_names[j]
                name = name or f"group{gi}.param{j}"
                if name in by_name:
                    role, si = by_name[name].role, bool(by_name[name].scale_invariant)
                else:
                    role = group.get("role") or ("matrix" if p.dim() >= 2 else "vector")
                    si = bool(group.get("scale_invariant", False))
                m = _LAYER_RE.search(name)
                tracked.append(_Tracked(name, p, gi, str(role), si, int(m.group(1)) if m else None))
        return tracked

    # ---- the step protocol -----------------------------------------------------------------

    def measured(self, step: int) -> bool:
        """True when `step` is one the monitor measures."""
        return step % self.every == 0

    def before_forward(self, step: int | None = None) -> None:
        """Call before the forward of `step`: arms attention/logit recording on measured steps."""
        s = self._t + 1 if step is None else step
        self._pending = s
        if self.measured(s):
            if self._snapshot_step != s:
                self._take_snapshot(s)
            self._arm(True)
        elif self._armed:
            self._arm(False)

    def step(self, step: int | None = None) -> dict[str, float] | None:
        """Call after optimizer.step(); returns the metrics on measured steps, else None.

        Without `step` it is the one given to the last before_forward (else the previous + 1).
        """
        if step is None:
            step = self._pending if self._pending is not None else self._t + 1
        s, self._t, self._pending = step, step, None
        metrics = None
        if self.measured(s):
            metrics = self._measure(s)
            self.latest = metrics
            # Every rank measures (the reductions are collective); only rank 0 writes.
            if self.sink is not None and distributed.is_main_process():
                self.sink(s, metrics)
        self._snapshot, self._snapshot_step = None, None
        if self.measured(s + 1):
            self._take_snapshot(s + 1)
            self._arm(True)
        elif self._armed:
            self._arm(False)
        return metrics

    def close(self) -> None:
        """Remove the hooks and stop attention recording."""
        self._arm(False)
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._snapshot = None

    # ---- recording ------------------------------------------------------------------------

    def _take_snapshot(self, step: int) -> None:
        with torch.no_grad():
            self._snapshot = [t.param.detach().clone() for t in self._tracked]
        self._snapshot_step = step

    def _arm(self, on: bool) -> None:
        self._armed = on
        for m in self._attn:
            if hasattr(m, "record_stats"):
                m.record_stats = on

    def _mha_pre(self, k: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if not (self._armed and module.training):
                return None
            # need_weights and average_attn_weights are positions 4 and 6 of MHA.forward
            args = list(args)
            wanted = args[4] if len(args) > 4 else kwargs.get("need_weights", True)
            self._mha_wanted[k] = bool(wanted)
            for pos, key in ((4, "need_weights"), (6, "average_attn_weights")):
                if len(args) > pos:
                    args[pos] = key == "need_weights"
                else:
                    kwargs[key] = key == "need_weights"
            return tuple(args), kwargs

        return hook

    def _mha_post(self, k: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            if k not in self._mha_wanted:
                return None
            wanted = self._mha_wanted.pop(k)
            weights = output[1]
            if weights is not None:
                with torch.no_grad():
                    w = weights if weights.dim() == 4 else weights.unsqueeze(0)
                    self._mha_stats[k] = probes.attention_entropy(w)
            return output if wanted else (output[0], None)

        return hook

    def _logits_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not (self._armed and module.training):
            return
        out = output
        if isinstance(out, dict):
            out = out.get("logits")
        elif isinstance(out, (tuple, list)) and out:
            out = out[0]
        is_logits = isinstance(out, torch.Tensor) and out.is_floating_point() and out.dim() >= 2
        if is_logits and out.shape[-1] >= 2:
            with torch.no_grad():
                self._logits = probes.logit_stats(out)

    # ---- measuring ------------------------------------------------------------------------

    def _measure(self, step: int) -> dict[str, float]:
        full = self.level == "full"
        keys: list[str] = []
        vals: list[torch.Tensor] = []
        batch_reduce: list[str | None] = []  # "mean"/"max" across data-parallel ranks
        floats: dict[str, float] = {}
        per_tensor: list[tuple[_Tracked, str]] = []  # for the summaries

        def put(
            probe: str,
            t: _Tracked | None,
            value: torch.Tensor,
            key: str | None = None,
            reduce: str | None = None,
        ) -> None:
            keys.append(key or f"mon/{probe}/{t.name}")
            # A statistic of a sharded DTensor parameter is all-reduced here (full), so every
            # rank holds the one-process value.
            vals.append(distributed.full(value.detach()).reshape(()).float())
            batch_reduce.append(reduce)
            if t is not None:
                per_tensor.append((t, probe))

        hypers = [equilibrium.hyper_for(self.optimizer, g) for g in self.optimizer.param_groups]
        prev = self._snapshot if self._snapshot_step == step else None
        with torch.no_grad():
            for i, t in enumerate(self._tracked):
                w = t.param.detach()
                group = self.optimizer.param_groups[t.group]
                w_norm = torch.linalg.vector_norm(w.float())
                put("w_norm", t, w_norm)
                grad_norm = None
                if t.param.grad is not None:
                    grad_norm = torch.linalg.vector_norm(t.param.grad.detach().float())
                    put("grad_norm", t, grad_norm)
                angle = None
                prev_norm = w_norm
                if prev is not None:
                    p = prev[i]
                    delta = w - p
                    radial, tangential = probes.update_split(p, delta)
                    prev_norm = torch.linalg.vector_norm(p.float())
                    upd = torch.linalg.vector_norm(delta.float())
                    angle = torch.atan2(tangential, prev_norm + radial)
                    put("upd_norm", t, upd)
                    put("upd_ratio", t, upd / prev_norm.clamp_min(1e-30))
                    put("angle", t, angle)
                    if full:
                        put("upd_radial", t, radial)
                        put("upd_tangential", t, tangential)
                        if w.dim() >= 2:
                            put("angle_row", t, probes.row_angular_update(p, w))
                lr = float(group.get("lr", 0.0))
                h = hypers[t.group]
                if t.scale_invariant:
                    put("eff_lr", t, probes.effective_lr(lr, w))
                    if grad_norm is not None:
                        put("gw", t, grad_norm / w_norm.clamp_min(1e-30))
                    if h is not None:
                        self._predict(
                            t,
                            h,
                            w.numel(),
                            angle,
                            w_norm,
                            prev_norm,
                            grad_norm,
                            put,
                            floats,
                            per_tensor,
                        )
                if h is not None and h.kind == "lion":
                    put("lion_bound", t, w.abs().max().float() * h.wd)
                if full and w.dim() >= 2:
                    sigma, self._sigma_v[i] = probes.power_iteration(
                        w, self._sigma_v.get(i), self._gen
                    )
                    put("sigma_max", t, sigma)
            self._attention(full, put)
            if self._logits is not None:
                names = ("logz_mean", "logz_max", "logit_max")
                for key, v, reduce in zip(names, self._logits, ("mean", "max", "max"),
                                          strict=True):
                    put("", None, v, key=f"mon/{key}", reduce=reduce)
                self._logits = None
        stacked = torch.stack([v.to(vals[0].device) for v in vals]) if vals else None
        if stacked is not None:
            stacked = _across_ranks(stacked, batch_reduce)
        values = stacked.tolist() if stacked is not None else []
        metrics = dict(zip(keys, values, strict=True))
        metrics.update(floats)
        metrics.update(self._summaries(metrics, per_tensor))
        if self.level == "summary":
            return summary.aggregate(metrics, [(t.name, t.role, t.scale_invariant, probe)
                                               for t, probe in per_tensor])
        return metrics

    def _predict(self, t, h, numel, angle, w_norm, prev_norm, grad_norm, put, floats, per_tensor):
        """Equilibrium predictions for one scale-invariant tensor (equilibrium.py)."""
        angle_pred, norm_unit = equilibrium.predict(h, numel, grad_norm_unit=1.0)
        floats[f"mon/angle_pred/{t.name}"] = angle_pred
        per_tensor.append((t, "angle_pred"))
        if angle is not None and angle_pred > 0:
            put("angle_ratio", t, angle / angle_pred)
        gw_pred = equilibrium.predicted_grad_ratio(h)
        if gw_pred is not None:
            floats[f"mon/gw_pred/{t.name}"] = gw_pred
            per_tensor.append((t, "gw_pred"))
            if grad_norm is not None:
                put("gw_ratio", t, grad_norm / w_norm.clamp_min(1e-30) / gw_pred)
        if norm_unit is None:
            return
        if h.kind in ("sgd", "sgdw", "sgdp"):
            if grad_norm is None:
                return
            # ‖ŵ‖ ∝ sqrt(‖g̃‖) with ‖g̃‖ = ‖g‖·‖w‖, the gradient at unit norm
            norm_pred = norm_unit * torch.sqrt(grad_norm * prev_norm)
            put("norm_pred", t, norm_pred)
            put("norm_ratio", t, w_norm / norm_pred.clamp_min(1e-30))
        else:
            floats[f"mon/norm_pred/{t.name}"] = norm_unit
            per_tensor.append((t, "norm_pred"))
            put("norm_ratio", t, w_norm / norm_unit)

    def _attention(self, full: bool, put: Callable[..., None]) -> None:
        for k, m in enumerate(self._attn):
            entropy = max_logit = None
            if isinstance(m, nn.MultiheadAttention):
                entropy = self._mha_stats.pop(k, None)
            else:
                stats = getattr(m, "stats", None)
                if isinstance(stats, dict):
                    entropy, max_logit = stats.get("entropy"), stats.get("max_logit")
                    m.stats = None  # never report the same forward twice
            clip = getattr(m, "qk_clip_stats", None)
            if isinstance(clip, dict):  # wdlab.nn.qk_clip: already the max over the ranks
                put("qk_clip_max_logit", None, clip["max_logit"].max(),
                    key=f"mon/qk_clip_max_logit/layer:{k}")
                put("qk_clip_clipped", None, clip["clipped"], key=f"mon/qk_clip_clipped/layer:{k}")
                m.qk_clip_stats = None
            for probe, v, reduce, across in (
                ("attn_entropy", entropy, torch.mean, "mean"),
                ("attn_max_logit", max_logit, torch.max, "max"),
            ):
                if v is None:
                    continue
                v = v.detach().float().reshape(-1)
                put(probe, None, reduce(v), key=f"mon/{probe}/layer:{k}", reduce=across)
                if full:
                    for head in range(v.numel()):
                        put(probe, None, v[head], key=f"mon/{probe}/layer:{k}/head:{head}",
                            reduce=across)

    @staticmethod
    def _summaries(metrics: dict[str, float], per_tensor: list[tuple[_Tracked, str]]) -> dict:
        groups: dict[str, list[float]] = defaultdict(list)
        for t, probe in per_tensor:
            if probe not in _ROLE_SUMMARY:
                continue
            v = metrics.get(f"mon/{probe}/{t.name}")
            if v is None or not math.isfinite(v):
                continue
            groups[f"mon/{probe}/role:{t.role}"].append(v)
            if t.scale_invariant:
                groups[f"mon/{probe}/role:si"].append(v)
            if t.layer is not None and probe in _LAYER_SUMMARY:
                groups[f"mon/{probe}/layer:{t.layer}"].append(v)
        return {k: sum(v) / len(v) for k, v in groups.items()}


def _unwrapped(model: nn.Module) -> nn.Module:
    """The plain model inside DDP's and torch.compile's wrappers, so the metric names are the
    plain model's (no "module." or "_orig_mod." prefix)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _across_ranks(values: torch.Tensor, reduce: Sequence[str | None]) -> torch.Tensor:
    """Batch statistics (logits, attention) averaged ("mean") or maxed ("max") over the ranks of
    the default process group, so under DDP/FSDP2 each rank reports the whole global batch's
    value (the mean assumes equal per-rank batches, as DistributedSampler gives). Parameter
    statistics (None) are already global. Two collectives at most; nothing without a group."""
    _, world = distributed.rank_and_world()
    if world == 1 or not any(reduce):
        return values
    import torch.distributed as dist

    out = values.clone()
    for kind, op in (("mean", dist.ReduceOp.SUM), ("max", dist.ReduceOp.MAX)):
        index = torch.tensor([i for i, r in enumerate(reduce) if r == kind], dtype=torch.long,
                             device=values.device)
        part = values[index].contiguous()
        dist.all_reduce(part, op=op)  # every rank calls it, even with nothing of that kind
        out[index] = part / world if kind == "mean" else part
    return out
