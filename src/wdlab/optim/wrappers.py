"""Wrappers that change what any optimizer's step does to some weights, after it has run.

Each wrapper takes a built optimizer (wdlab's or torch's), lets it step, then acts on the
result: project norms back (NaP, LAWN), turn the update into a fixed-angle rotation (REQ's
rotational variant), cap the update norm's growth (Fira's limiter), or replace the decay by a
sign-masked one (cautious weight decay). They share the inner optimizer's `param_groups` and
`state` (so lr schedulers and `defaults` act on the inner optimizer) and add their own state
to the state_dict under one key per wrapper class, "wrapper:<ClassName>", keyed by parameter
index like torch's; wrappers nest. Loading a state_dict without that key (one saved from the
bare optimizer) keeps the wrapper's current state.
"""

from __future__ import annotations

import math
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch

from wdlab.optim._dispatch import by_device_and_dtype, choose, pick
from wdlab.optim.base import check_range, decoupled_decay_rate
from wdlab.optim.distributed import scalar, settled

GRANULARITIES = ("tensor", "neuron")
_HOOK_DICTS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


def rows_of(tensor: torch.Tensor, per: str) -> torch.Tensor:
    """`tensor` as rows: one per neuron (dim 0 of a >= 2-D weight) or the whole tensor as one."""
    if per == "neuron" and tensor.ndim >= 2:
        return tensor.reshape(tensor.size(0), -1)
    return tensor.reshape(1, -1)


def row_norms(tensor: torch.Tensor, per: str) -> torch.Tensor:
    """Norm of each row of rows_of(tensor, per), shape (rows, 1).

    A DTensor's whole-tensor norm is computed without flattening (an unevenly sharded
    DTensor cannot be) and all-reduced (`settled`), so state and decisions hold the global
    value; per-neuron norms of a Shard(0) tensor stay sharded with their rows.
    """
    if not (per == "neuron" and tensor.ndim >= 2):
        return settled(torch.linalg.vector_norm(tensor).reshape(1, 1))
    return settled(torch.linalg.vector_norm(rows_of(tensor, per), dim=1, keepdim=True))


def _per_row(factor: torch.Tensor, tensor: torch.Tensor, per: str) -> torch.Tensor:
    """(rows, 1) factors shaped to broadcast over `tensor` itself (no reshape of it)."""
    if per == "neuron" and tensor.ndim >= 2:
        return factor.reshape(-1, *[1] * (tensor.ndim - 1))
    return factor.reshape(())


def _check_per(per: Any) -> None:
    if per not in GRANULARITIES:
        raise ValueError(f"per must be one of {', '.join(GRANULARITIES)}; got {per!r}")


class OptimizerWrapper(torch.optim.Optimizer):
    """Base: delegates the torch.optim.Optimizer contract to `optimizer`, keeps its own state.

    Subclasses implement `_wrapped_step()` (which calls self.optimizer.step()) and, for
    non-tensor state, `_extra_state()` / `_load_extra_state()`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        # No super().__init__: the param groups and state are the inner optimizer's.
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                "optimizer must be a torch.optim.Optimizer instance, "
                f"got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.defaults = optimizer.defaults
        self.wrapper_state: defaultdict[torch.Tensor, dict[str, torch.Tensor]] = defaultdict(dict)
        for name in _HOOK_DICTS:
            setattr(self, name, OrderedDict())
        self._patch_step_function()

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> defaultdict[torch.Tensor, Any]:
        return self.optimizer.state

    @state.setter
    def state(self, value: defaultdict[torch.Tensor, Any]) -> None:
        self.optimizer.state = value

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _params(self) -> list[torch.Tensor]:
        """All params in param_groups order: the index order of torch's state_dict."""
        return [p for group in self.param_groups for p in group["params"]]

    def _select(
        self, params: Iterable[torch.Tensor] | None, key: str, value: Any, what: str
    ) -> list[torch.Tensor]:
        """`params` if given (all in the optimizer), else the params of groups with key=value."""
        known = self._params()
        if params is None:
            chosen = [p for g in self.param_groups if g.get(key) == value for p in g["params"]]
            if not chosen:
                raise ValueError(
                    f"{type(self).__name__} found no {what}: no param group has {key}={value!r} "
                    "(build groups with wdlab.param_groups) and params= was not given"
                )
            return chosen
        chosen = list(params)
        ids = {id(p) for p in known}
        if not chosen or any(id(p) not in ids for p in chosen):
            raise ValueError(
                f"params must be a non-empty list of parameters of the wrapped optimizer "
                f"({what} for {type(self).__name__})"
            )
        return chosen

    def _key(self) -> str:
        return f"wrapper:{type(self).__name__}"

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        """Restore what _extra_state saved (override)."""

    def state_dict(self) -> dict[str, Any]:
        out = self.optimizer.state_dict()
        index = {id(p): i for i, p in enumerate(self._params())}
        own = {index[id(p)]: dict(s) for p, s in self.wrapper_state.items() if s}
        out[self._key()] = {"state": own, "extra": self._extra_state()}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        own = state_dict.pop(self._key(), None)
        self.optimizer.load_state_dict(state_dict)
        if own is None:
            return
        params = self._params()
        self.wrapper_state = defaultdict(dict)
        for i, entries in own["state"].items():
            p = params[int(i)]
            self.wrapper_state[p] = {
                k: v.to(p.device) if isinstance(v, torch.Tensor) else v for k, v in entries.items()
            }
        self._load_extra_state(dict(own.get("extra", {})))

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def _snapshot(self, params: Iterable[torch.Tensor]) -> dict[torch.Tensor, torch.Tensor]:
        """Copies of the params the inner step will move (those with a gradient)."""
        return {p: p.detach().clone() for p in params if p.grad is not None}

    def _group_of(self) -> dict[torch.Tensor, dict[str, Any]]:
        return {p: g for g in self.param_groups for p in g["params"]}

    def _wrapped_step(self) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._wrapped_step()
        return loss


class _NormProjection(OptimizerWrapper):
    """Record target norms once `steps == start` and project onto them after every later step."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Iterable[torch.Tensor] | None,
        select: tuple[str, Any, str],
        per: str,
        start: int,
    ) -> None:
        super().__init__(optimizer)
        _check_per(per)
        self.targets = self._select(params, *select)
        self.per, self.start, self.steps = per, start, 0
        if start == 0:
            self._record()

    def _record(self) -> None:
        for p in self.targets:
            self.wrapper_state[p]["norm"] = row_norms(p.detach(), self.per)

    def _wrapped_step(self) -> None:
        self.optimizer.step()
        self.steps += 1
        if self.steps == self.start:
            self._record()
        elif self.steps > self.start:
            for p in self.targets:
                target = self.wrapper_state[p]["norm"]
                now = row_norms(p.detach(), self.per)
                # Rows that start at zero (or collapse to zero) have no direction to keep.
                ok = (target > 0) & (now > 0)
                factor = torch.where(ok, target / torch.where(ok, now, 1.0), 1.0)
                p.detach().mul_(_per_row(factor, p, self.per))

    def _extra_state(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.steps = int(extra.get("steps", self.steps))


class NaP(_NormProjection):
    """Normalize-and-Project: keep each scale-invariant weight at its initial norm.

    Lyle et al., "Normalization and effective learning rates in reinforcement learning": with
    a normalization after each layer, projecting every scale-invariant weight back to its norm
    at wrap time after each step fixes the effective lr to the schedule (REFERENCE.md §2).
    Which weights: `params` if given, else those of groups with scale_invariant=True (as
    wdlab.param_groups marks them). per="tensor" (default, one norm per tensor) or "neuron"
    (one per row of dim 0). Rows of zero norm are left alone. State: "norm" per param.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Iterable[torch.Tensor] | None = None,
        *,
        per: str = "tensor",
    ) -> None:
        select = ("scale_invariant", True, "scale-invariant weights")
        super().__init__(optimizer, params, select, per, start=0)


class LAWN(_NormProjection):
    """Logit Attenuating Weight Normalization: after `warmup` steps, fix the output weights' norms.

    Kumar et al. ("LAWN"): training runs free for a warm phase, then the norms of the final
    homogeneous sub-network are held at their values at the end of it, which stops the logits
    from growing. Which weights: `params` if given, else groups with role "output" (as
    wdlab.param_groups marks the head). per as NaP's. State: "norm" per param once recorded.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup: int,
        params: Iterable[torch.Tensor] | None = None,
        *,
        per: str = "tensor",
    ) -> None:
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be an integer number of steps >= 0, got {warmup!r}")
        super().__init__(optimizer, params, ("role", "output", "output weights"), per, warmup)


class RotationalWrapper(OptimizerWrapper):
    """REQ's rotational variant: every step rotates each neuron by the equilibrium angle.

    Kosson, Messmer, Jaggi, "Rotational Equilibrium" (epfml/REQ), REFERENCE.md §2. Per row
    (neuron; a 1-D tensor is one row) of each selected weight, after the inner step produced
    the update u:
      u <- u - w*<u, w>/||w0||^2          (drop the radial part, decay included)
      v <- 0.9*v + 0.1*||u||^2,  v_hat = v/(1 - 0.9^t)
      w <- w + tan(theta)*||w0||*u/sqrt(v_hat), then rescaled to ||w0||
    so the angle is exactly theta whenever ||u||^2 = v_hat, in particular on step 1 (REQ writes
    theta for tan(theta); the two agree to O(theta^3)). theta is the equilibrium angular update
    of the wrapped optimizer's group (wdlab.optim.equilibrium), recomputed every step so it
    follows the lr schedule, or `angle` (radians, or a function of the group) if given; a
    group whose lr is 0 does not rotate. Which weights: `params`, else groups with
    scale_invariant=True. Rows of zero norm are left to the inner update.
    State: "norm" (||w0|| per row), "ema" (v per row), "step".
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Iterable[torch.Tensor] | None = None,
        *,
        angle: float | Callable[[dict[str, Any]], float] | None = None,
        beta: float = 0.9,
    ) -> None:
        super().__init__(optimizer)
        if angle is not None and not callable(angle):
            check_range("angle", angle, 0.0, math.pi / 2)
        check_range("beta", beta, 0.0, 1.0)
        self.angle, self.beta = angle, beta
        self.targets = self._select(params, "scale_invariant", True, "scale-invariant weights")
        groups = self._group_of()
        for p in self.targets:
            self._angle_of(groups[p])  # fail now, not at the first step
            self.wrapper_state[p]["norm"] = row_norms(p.detach(), "neuron")
            self.wrapper_state[p]["ema"] = torch.zeros_like(self.wrapper_state[p]["norm"])
            self.wrapper_state[p]["step"] = torch.zeros(())

    def _angle_of(self, group: dict[str, Any]) -> float:
        if self.angle is not None:
            return float(self.angle(group) if callable(self.angle) else self.angle)
        if float(group.get("lr", 0.0)) == 0.0:
            return 0.0
        from wdlab.optim.equilibrium import hyper_for, predict

        hyper = hyper_for(self.optimizer, group)
        if hyper is None:
            raise ValueError(
                f"angle: no equilibrium prediction for {type(self.optimizer).__name__} with "
                f"weight_decay={group.get('weight_decay')!r}, decay={group.get('decay')!r} "
                "(needs weight_decay > 0 and SGD/SGDW/AdamW/Lion/AdamP/SGDP); pass angle=<radians>"
            )
        return predict(hyper, numel=1)[0]

    def _wrapped_step(self) -> None:
        before = self._snapshot(self.targets)
        self.optimizer.step()
        groups = self._group_of()
        for p, w in before.items():
            theta = self._angle_of(groups[p])
            state = self.wrapper_state[p]
            norm0 = state["norm"]
            w_rows = rows_of(w, "neuron")
            u = rows_of(p.detach(), "neuron") - w_rows
            live = norm0 > 0
            radial = (u * w_rows).sum(dim=1, keepdim=True) / torch.where(live, norm0, 1.0).square()
            u -= w_rows * radial
            state["step"] += 1
            state["ema"].lerp_(u.square().sum(dim=1, keepdim=True), 1 - self.beta)
            v_hat = state["ema"] / (1 - self.beta ** float(state["step"]))
            moving = live & (v_hat > 0)
            gain = math.tan(theta) * norm0 / torch.where(moving, v_hat, 1.0).sqrt()
            new = w_rows + u * torch.where(moving, gain, 0.0)
            new_norm = torch.linalg.vector_norm(new, dim=1, keepdim=True)
            new *= torch.where(live, norm0 / torch.where(live, new_norm, 1.0), 1.0)
            rotated = torch.where(live, new, rows_of(p.detach(), "neuron"))
            p.detach().copy_(rotated.reshape(p.shape))


class NormGrowthLimiter(OptimizerWrapper):
    """Fira-style limiter: ||u_t|| <= gamma*||u_{t-1}|| for each tensor's update u.

    Chen et al., "Fira": a sudden jump of the update norm precedes loss spikes; capping its
    relative growth per step removes them. u is measured per unit lr, u = (w_after -
    w_before)/lr, so an lr schedule's own growth is not capped; if ||u_t|| > gamma*||u_{t-1}||
    the step is scaled down to exactly gamma*||u_{t-1}||, and that capped norm is what the next
    step compares with. The update includes the inner optimizer's decay. No cap on a tensor's
    first step, after a zero update, or when lr is 0. `params` defaults to every param.
    State: "prev_norm" per param.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        gamma: float = 1.01,
        params: Iterable[torch.Tensor] | None = None,
    ) -> None:
        super().__init__(optimizer)
        check_range("gamma", gamma, 1.0)
        self.gamma = gamma
        every = params is None
        self.targets = self._params() if every else self._select(params, "", None, "weights")

    def _wrapped_step(self) -> None:
        before = self._snapshot(self.targets)
        self.optimizer.step()
        groups = self._group_of()
        for p, w in before.items():
            lr = float(groups[p]["lr"])
            if lr <= 0:
                continue
            update = p.detach() - w
            norm = scalar(torch.linalg.vector_norm(update)) / lr
            prev = self.wrapper_state[p].get("prev_norm")
            if prev is not None and float(prev) > 0 and norm > self.gamma * float(prev):
                cap = self.gamma * float(prev)
                p.detach().copy_(w.add_(update, alpha=cap / norm))
                norm = cap
            self.wrapper_state[p]["prev_norm"] = torch.tensor(norm, dtype=torch.float64)


class CautiousWeightDecay(OptimizerWrapper):
    """Cautious weight decay: decay only coordinates whose update agrees in sign with the weight.

    Chen et al., "Cautious Weight Decay": the inner optimizer steps with weight_decay set to 0,
    giving the update -lr*u; then w <- w - c*w only where u*w > 0 (the step already pulls that
    coordinate toward 0), with c the group's decay rate: lr*wd ("decoupled", and torch
    optimizers, whose groups have no "decay"), (lr/initial_lr)*wd ("independent"). Coordinates
    where u*w <= 0 are untouched by decay. Groups with decay="l2" and wd > 0 are refused: an
    L2 term in the gradient cannot be masked after the fact. This replaces optimizer-specific
    decay forms (SGDP's 1/(1 - momentum), FAdam's Fisher-scaled term) by the plain masked one.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        super().__init__(optimizer)
        for group in self.param_groups:
            if group.get("decay") == "l2" and group.get("weight_decay", 0) > 0:
                raise ValueError(
                    "decay='l2' cannot be made cautious; use decay='decoupled' or "
                    "'independent' in the wrapped optimizer"
                )

    def _wrapped_step(self) -> None:
        decaying = [g for g in self.param_groups if g.get("weight_decay", 0) > 0]
        rates = [decoupled_decay_rate({"decay": "decoupled", **g}) for g in decaying]
        before = self._snapshot(p for g in decaying for p in g["params"])
        saved = [g["weight_decay"] for g in decaying]
        for g in decaying:
            g["weight_decay"] = 0.0
        try:
            self.optimizer.step()
        finally:
            for g, wd in zip(decaying, saved, strict=True):
                g["weight_decay"] = wd
        for group, rate in zip(decaying, rates, strict=True):
            for p in group["params"]:
                if p not in before:
                    continue
                w = before[p]
                agree = (p.detach() - w).mul_(w) < 0  # the step -lr*u moves w toward 0
                p.detach().sub_(w.mul_(agree), alpha=rate)


class CautiousUpdate(OptimizerWrapper):
    """Cautious update masking (Liang et al. 2024, "Cautious Optimizers", the C- variants).

    The inner optimizer steps without its decoupled decay, giving the update Δ = -lr*u. Where
    u disagrees in sign with the gradient (u*g <= 0) the update is masked out, and the rest is
    rescaled per tensor by numel / (mask.sum() + 1), as in the paper and pytorch-optimizer:
        w <- decay(w) + Δ * m * numel/(Σm + 1),   m = [u*g > 0]
    The decay is then applied on its own, unmasked: a wdlab optimizer's decay_before_update
    (its decay mode and decay_to target, the plain rate c of decay_factors; this replaces
    AdamP's wd_ratio and FAdam's Fisher-scaled forms, as CautiousWeightDecay does), or
    w*(1 - lr*wd) for a torch optimizer's weight_decay. Groups with decay="l2" keep their
    decay inside the gradient and so inside the masked update. State: none of its own.

    Two paths, the same result (up to the sign of a zero): "foreach" where the group's update
    runs multi-tensor (impl="foreach", or "auto" off the CPU; a torch optimizer's foreach=True,
    or unset off the CPU), so that the mask adds a fixed number of ops per (device, dtype)
    bucket rather than ~17 per tensor on a GPU; "reference" (per-tensor ops) elsewhere, and
    for DTensor shards, whose mask counts it all-reduces. impl= forces one ("auto": follow
    the groups).
    """

    IMPLS = ("auto", "reference", "foreach")

    def __init__(self, optimizer: torch.optim.Optimizer, impl: str = "auto") -> None:
        super().__init__(optimizer)
        if impl not in self.IMPLS:
            raise ValueError(f"impl must be one of {', '.join(self.IMPLS)}; got {impl!r}")
        self.impl = impl

    def _wrapped_step(self) -> None:
        decoupled = [g for g in self.param_groups
                     if g.get("weight_decay", 0) > 0 and g.get("decay") != "l2"]
        fast, slow = self._paths()
        before = self._snapshot(slow)
        before.update(_snapshot_foreach(fast))
        saved = [g["weight_decay"] for g in decoupled]
        for g in decoupled:
            g["weight_decay"] = 0.0
        try:
            self.optimizer.step()
        finally:
            for g, wd in zip(decoupled, saved, strict=True):
                g["weight_decay"] = wd
        masked: dict[torch.Tensor, torch.Tensor] = {}
        for p in slow:
            w = before[p]
            delta = p.detach() - w  # -lr*u
            agree = (delta * p.grad < 0).to(delta.dtype)
            scale = p.numel() / (settled(agree.sum()) + 1)
            masked[p] = delta.mul_(agree).mul_(scale)
            p.detach().copy_(w)
        masked.update(_masked_foreach(fast, [before[p] for p in fast]))
        decaying = {id(g) for g in decoupled}
        for group in self.param_groups:
            params = [p for p in group["params"] if p in masked]
            if not params:
                continue
            if id(group) in decaying:
                self._decay(group, params)
            for ps, ms in by_device_and_dtype(params, [masked[p] for p in params]):
                torch._foreach_add_(ps, ms)
            if id(group) in decaying and hasattr(self.optimizer, "decay_after_update"):
                self.optimizer.decay_after_update(group, params)

    def _paths(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The params with a gradient: those the foreach path takes, and the rest."""
        fast: list[torch.Tensor] = []
        slow: list[torch.Tensor] = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for impl, idx in choose({"impl": self._impl_of(group)}, [params], None):
                (fast if impl == "foreach" else slow).extend(pick(params, idx))
        return fast, slow

    def _impl_of(self, group: dict[str, Any]) -> str:
        """The path of this group's params: "foreach", "reference" or "auto" (by device)."""
        if self.impl != "auto":
            return self.impl
        torch_choice = {True: "foreach", False: "reference"}.get(group.get("foreach"), "auto")
        wanted = group.get("impl", torch_choice)
        return wanted if wanted in ("reference", "foreach") else "auto"

    def _decay(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        inner = self.optimizer
        if hasattr(inner, "decay_before_update") and "decay_to" in group:
            inner.decay_before_update(group, params, [p.grad for p in params])
            return
        rate = decoupled_decay_rate({"decay": "decoupled", **group})
        for (ps,) in by_device_and_dtype(params):
            torch._foreach_mul_(ps, 1.0 - rate)


def _snapshot_foreach(params: list[torch.Tensor]) -> dict[torch.Tensor, torch.Tensor]:
    """Copies of `params`, one multi-tensor clone per (device, dtype) bucket."""
    out: dict[torch.Tensor, torch.Tensor] = {}
    for (ps,) in by_device_and_dtype(params):
        out.update(zip(ps, torch._foreach_clone(ps), strict=True))
    return out


def _masked_foreach(
    params: list[torch.Tensor], before: list[torch.Tensor]
) -> dict[torch.Tensor, torch.Tensor]:
    """CautiousUpdate's Δ*m*numel/(Σm + 1) per param, in multi-tensor ops per (device, dtype)
    bucket (no op per tensor, no host read), with each param put back to its `before` copy.

    The same arithmetic as the per-tensor loop: no foreach comparison exists, so the mask is
    taken negated, -m = min(sign(Δ*g), 0) (-1 where Δ*g < 0), and the per-tensor count Σm is
    its 1-norm, a 0-d tensor; the rescale reciprocal(Σm + 1)*(-numel) (Python's numel/t) carries
    the sign back, so that kept entries are Δ*m*scale exactly. NaN in Δ*g: that entry is
    dropped by the loop's comparison but makes this tensor's count NaN.
    """
    out: dict[torch.Tensor, torch.Tensor] = {}
    grads = [p.grad for p in params]
    for ps, ws, gs in by_device_and_dtype(params, before, grads):
        deltas = torch._foreach_sub(ps, ws)  # -lr*u
        neg_mask = torch._foreach_mul(deltas, gs)
        torch._foreach_sign_(neg_mask)
        torch._foreach_clamp_max_(neg_mask, 0.0)
        scales = list(torch._foreach_norm(neg_mask, 1))  # Σm per tensor
        torch._foreach_add_(scales, 1.0)
        torch._foreach_reciprocal_(scales)
        torch._foreach_mul_(scales, [-p.numel() for p in ps])
        torch._foreach_mul_(deltas, neg_mask)
        torch._foreach_mul_(deltas, scales)
        torch._foreach_copy_(ps, ws)
        out.update(zip(ps, deltas, strict=True))
    return out
