"""Predicted rotational equilibrium (angular update and norm) of scale-invariant weights.

REFERENCE.md §2: a scale-invariant tensor w (f(c·w) = f(w)) gets gradients orthogonal to
w with size ∝ 1/‖w‖. Weight decay shrinks ‖w‖ by a fraction d per step while the
orthogonal updates grow it; the two balance at an equilibrium norm, and the angle each
step rotates w by settles at a value fixed by the optimizer's hyperparameters alone.

One random-walk derivation covers the momentum optimizers. Write the update as
u_t = Σ_k c_k·g_{t-k} (c_k: the weight a gradient gets k steps later, set by the
momentum form) and let d be the decay fraction per step. Then, to first order in d:

    unprojected   θ̂² = 2d · Σc_k² / (Σc_k)²       ‖ŵ‖² = η²·E‖g‖²·(Σc_k)² / (2d)
    projected     θ̂² = 2d                         ‖ŵ‖² = η²·E‖g‖²·Σc_k² / (2d)

"Projected" is AdamP/SGDP: the update's radial part is removed, so momentum cannot
feed norm growth through its lag correlations (the point of "Slowing Down the
Slowdown"). For Adam-type updates g is g/sqrt(v), so E‖g‖² ≈ C (numel). For SGD,
E‖g‖² = E‖g̃‖²/‖w‖² with g̃ the gradient at unit norm, which gives a quartic root.

Specialized, this reproduces REFERENCE §2's table:
  SGD + momentum α, coupled λ (d = ηλ/(1−α)):  θ̂ = sqrt(2ηλ/(1+α))
  AdamW β1 (d = ηλ):                            θ̂ = sqrt(2ηλ(1−β1)/(1+β1)), ‖ŵ‖ = sqrt(ηC/(2λ))
and gives for the optimizers the table does not list (derived here; the decoupled SGDW
and Lion formulas are checked by tests/test_equilibrium.py when wdlab's optimizers import):
  SGDW, decoupled λ (d = ηλ):                   θ̂ = sqrt(2ηλ(1−α)/(1+α))
  AdamP (d = ηλ·wd_ratio, projected):           θ̂ = sqrt(2ηλ·wd_ratio)        (β1 plays no part)
  SGDP (d = ηλ·wd_ratio/(1−α), projected):      θ̂ = sqrt(2ηλ·wd_ratio/(1−α))

Lion's update sign(c_t) has fixed size sqrt(C); its lag correlations follow the arcsine
law for the jointly Gaussian c's: θ̂² = 2d / (1 + (4/π)·Σ_{k≥1} arcsin ρ_k). REFERENCE's
closed form sqrt(π/2)·sqrt(2ηλ)·sqrt((1−β1)² + β1²(1−β2)/(1+β2)) is this series'
small-variance limit (they agree within ~1% at β = (0.9, 0.99)); ‖ŵ‖² = η²·C·(1 + ...)/(2d).

Two first-order-in-d refinements make the formulas match a random-walk simulation at
ηλ ≈ 2e-3 (SGDW, AdamW, Lion within 0.5%): lags are discounted by the decay, (1 − d)^k,
and only the tangential share of the update rotates w (its radial share, which feeds the
momentum-driven norm growth, is 1 − shrink·(L − V)²/(4LV) with V the one-step and L the
long-run variance of u). "2d" is written exactly as 1 − (1 − d)².

In "independent" decay mode d uses the schedule multiplier (lr/initial_lr)·λ instead of
lr·λ (REFERENCE §1); in "corrected" mode (AdamC) d = lr·(lr/initial_lr)·λ.

The same norm balance fixes the gradient-to-weight ratio of a scale-invariant tensor under
SGD-type updates (Defazio et al. 2025, "Why Gradients Rapidly Increase Near the End of
Training"): ‖g‖/‖w‖ = sqrt(shrink/(η²·gain)), i.e. sqrt(2λ/η_t) for plain SGD with decoupled
decay, which grows as the lr anneals, and sqrt(2λ/η_max) with corrected decay, which does not
(predicted_grad_ratio). For Adam-type and Lion updates the balance holds for the normalized
update, not the raw gradient, so no ‖g‖/‖w‖ is predicted there.

Not predicted: Adam with coupled L2 (the decay is divided by sqrt(v)), AMSGrad, Muon
(orthogonalized updates), wdlab optimizers in "l2" mode other than SGDW, and any other
optimizer class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

KINDS = ("sgd", "sgdw", "adamw", "lion", "adamp", "sgdp")
DECAYS = ("decoupled", "independent", "corrected")


@dataclass(frozen=True)
class Hyper:
    """What the predictions need to know about one param group of one optimizer."""

    kind: str
    lr: float
    wd: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    wd_ratio: float = 0.1
    decay: str = "decoupled"
    initial_lr: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Plain numbers and a tuple whatever the caller passed (ints, a list of betas).
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "wd", float(self.wd))
        object.__setattr__(self, "betas", tuple(self.betas))


def _check(kind: str, decay: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"optimizer kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if decay not in DECAYS:
        raise ValueError(
            f"decay must be one of {', '.join(DECAYS)} for a prediction (l2 is the 'sgd' kind); "
            f"got {decay!r}"
        )


def _momentum_form(h: Hyper) -> tuple[float, float, float]:
    """(s, q, a) with u_t = s·g_t + q·Σ_k a^k·g_{t-k}, i.e. c_0 = s + q, c_k = q·a^k."""
    if h.kind in ("adamw", "adamp"):
        b1 = h.betas[0]
        s, q, a = ((1 - b1), b1 * (1 - b1), b1) if h.nesterov else (0.0, 1 - b1, b1)
    else:  # sgd, sgdw, sgdp: torch's buf = a·buf + (1 − dampening)·g; nesterov u = g + a·buf
        a = h.momentum
        q = 1.0 - h.dampening
        s, q = (1.0, a * q) if h.nesterov else (0.0, q)
    return s, q, a


def decay_per_step(h: Hyper) -> float:
    """The fraction d by which decay shrinks ‖w‖ per step (REFERENCE §1 and §2)."""
    _check(h.kind, h.decay)
    if h.decay in ("independent", "corrected"):
        init = h.initial_lr if h.initial_lr is not None else h.lr
        rate = (h.lr / init) * h.wd if init > 0 else 0.0
        if h.decay == "corrected":
            rate *= h.lr
    else:
        rate = h.lr * h.wd
    if h.kind == "sgd":  # coupled: λ·w passes through the momentum like a gradient
        s, q, a = _momentum_form(h)
        return rate * (s + q / (1 - a))
    if h.kind == "adamp":
        return rate * h.wd_ratio
    if h.kind == "sgdp":
        return rate * h.wd_ratio / (1 - h.momentum)
    return rate


def _shrink(d: float) -> float:
    """1 − (1 − d)²: the fraction of ‖w‖² that decay removes per step (≈ 2d)."""
    return 1.0 - (1.0 - d) ** 2


def _momentum_variance(h: Hyper, d: float) -> tuple[float, float]:
    """(Var u, long-run variance of u with lags discounted by (1 − d)^k), per unit E‖g‖².

    With c_0 = s + q, c_k = q·a^k the lag-k covariance is q·a^k·(s + q/(1 − a²)).
    """
    s, q, a = _momentum_form(h)
    var = s * s + 2 * s * q + q * q / (1 - a * a)
    b = a * (1 - d)
    return var, var + 2 * q * (s + q / (1 - a * a)) * b / (1 - b)


def _lag_discount(h: Hyper, d: float) -> float:
    """Decay discounts older updates by (1 − d) per lag; with coupled L2 the decay itself runs
    through the momentum, so the discount is already inside it (a random-walk simulation
    matches the undiscounted form there and the discounted one for decoupled decay)."""
    return 0.0 if h.kind == "sgd" else d


def _lion_variance(beta1: float, beta2: float, d: float) -> float:
    """Long-run variance of one coordinate of sign(c_t), lags discounted by (1 − d)^k.

    c_t is Gaussian; sign correlations follow the arcsine law (2/π)·arcsin ρ_k, with
    ρ_k = ρ_1·β2^(k−1).
    """
    var = (1 - beta1) ** 2 + beta1**2 * (1 - beta2) / (1 + beta2)
    if beta1 == 0 or var == 0:
        return 1.0
    rho = beta1 * (1 - beta2) * (beta1 * beta2 / (1 + beta2) + 1 - beta1) / var  # ρ_1
    total, weight = 0.0, 1.0 - d
    while rho * weight > 1e-12:
        total += weight * math.asin(min(rho, 1.0))
        rho *= beta2
        weight *= 1.0 - d
    return 1.0 + (4 / math.pi) * total


def predicted_angle(
    kind: str,
    lr: float,
    wd: float,
    *,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    wd_ratio: float = 0.1,
    decay: str = "decoupled",
    initial_lr: float | None = None,
) -> float:
    """Equilibrium angular update θ̂ (radians per step) of a scale-invariant tensor, §2."""
    h = Hyper(kind, lr, wd, momentum, dampening, nesterov, betas, wd_ratio, decay, initial_lr)
    return _angle(h)


def _angle(h: Hyper) -> float:
    d = decay_per_step(h)
    if d <= 0:
        return 0.0
    shrink = _shrink(d)
    if h.kind in ("adamp", "sgdp"):
        return math.sqrt(shrink)
    if h.kind == "lion":
        var, long_run = 1.0, _lion_variance(*h.betas, d)
    else:
        var, long_run = _momentum_variance(h, _lag_discount(h, d))
    if h.kind == "sgd":  # the radial decay runs through u itself: no split below
        return math.sqrt(shrink * var / long_run)
    # Only the tangential part of u rotates w. Its radial part u_r is what feeds the extra
    # norm growth (long_run − var); the norm balance gives u_r²/‖u‖² below.
    radial_share = shrink * (long_run - var) ** 2 / (4 * long_run * var)
    return math.sqrt(shrink * var / long_run * max(1.0 - radial_share, 0.0))


def predicted_norm(
    kind: str,
    lr: float,
    wd: float,
    *,
    numel: int,
    grad_norm_unit: float | None = None,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    wd_ratio: float = 0.1,
    decay: str = "decoupled",
    initial_lr: float | None = None,
) -> float | None:
    """Equilibrium norm ‖ŵ‖ of a scale-invariant tensor of `numel` elements, §2.

    SGD-type optimizers need `grad_norm_unit` = ‖g̃‖, the gradient norm at unit weight norm
    (‖g‖·‖w‖ for a scale-invariant w); without it they return None.
    """
    h = Hyper(kind, lr, wd, momentum, dampening, nesterov, betas, wd_ratio, decay, initial_lr)
    return _norm(h, numel, grad_norm_unit)


def _norm(h: Hyper, numel: int, grad_norm_unit: float | None) -> float | None:
    d = decay_per_step(h)
    if d <= 0:
        return None
    if h.kind == "lion":  # ‖sign(c)‖² = C exactly
        return math.sqrt(h.lr**2 * numel * _lion_variance(*h.betas, d) / _shrink(d))
    var, long_run = _momentum_variance(h, _lag_discount(h, d))
    gain = var if h.kind in ("adamp", "sgdp") else long_run
    if h.kind in ("adamw", "adamp"):  # E‖g/sqrt(v)‖² ≈ C
        return math.sqrt(h.lr**2 * numel * gain / _shrink(d))
    if grad_norm_unit is None:
        return None
    # ‖w‖² = η²·(‖g̃‖²/‖w‖²)·gain/shrink  =>  ‖w‖⁴ = η²‖g̃‖²·gain/shrink
    return (h.lr**2 * grad_norm_unit**2 * gain / _shrink(d)) ** 0.25


def predicted_grad_ratio(h: Hyper) -> float | None:
    """Steady-state ‖g‖/‖w‖ of a scale-invariant tensor under SGD-type updates (module
    docstring); None for the other kinds or without decay."""
    d = decay_per_step(h)
    if d <= 0 or h.lr <= 0 or h.kind not in ("sgd", "sgdw", "sgdp"):
        return None
    var, long_run = _momentum_variance(h, _lag_discount(h, d))
    gain = var if h.kind == "sgdp" else long_run
    return math.sqrt(_shrink(d) / (h.lr**2 * gain))


def _momentum_hyper(kind: str, group: dict[str, Any], **common: Any) -> Hyper:
    return Hyper(
        kind,
        momentum=float(group.get("momentum", 0.0)),
        dampening=float(group.get("dampening", 0.0)),
        nesterov=bool(group.get("nesterov", False)),
        **common,
    )


def _betas(group: dict[str, Any]) -> tuple[float, ...]:
    return tuple(float(b) for b in group.get("betas", (0.9, 0.999)))


def _hyper_of_kind(kind: str, group: dict[str, Any], common: dict[str, Any]) -> Hyper | None:
    """Hyper for a wdlab optimizer whose registry entry names prediction `kind`."""
    mode = group.get("decay", "decoupled")
    if kind == "sgdw":  # SGDW with l2 decay is torch's SGD: the coupled "sgd" prediction
        if mode == "l2":
            return _momentum_hyper("sgd", group, decay="decoupled", **common)
        return _momentum_hyper("sgdw", group, decay=mode, **common)
    if mode not in DECAYS:
        return None
    if kind == "adamw":
        return None if group.get("amsgrad", False) else Hyper(
            "adamw", betas=_betas(group), decay=mode, **common)
    if kind == "lion":
        return Hyper("lion", betas=_betas(group), decay=mode, **common)
    wd_ratio = float(group.get("wd_ratio", 0.1))
    if kind == "adamp":
        return Hyper("adamp", betas=_betas(group), nesterov=bool(group.get("nesterov", False)),
                     wd_ratio=wd_ratio, decay=mode, **common)
    if kind == "sgdp":
        return _momentum_hyper("sgdp", group, wd_ratio=wd_ratio, decay=mode, **common)
    return None


def hyper_for(optimizer: Any, group: dict[str, Any]) -> Hyper | None:
    """Read one group's hyperparameters for the prediction its optimizer has; None if none.

    wdlab's optimizers say which prediction applies in their registry entry
    (wdlab.optim.REGISTRY, `equilibrium`); torch's SGD, Adam and AdamW are known here.
    """
    import torch

    from wdlab.optim import entry_for

    lr, wd = float(group.get("lr", 0.0)), float(group.get("weight_decay", 0.0))
    if wd <= 0 or lr <= 0:
        return None
    entry = entry_for(optimizer)
    if entry is not None:
        if entry.equilibrium is None:
            return None
        initial_lr = group.get("initial_lr")
        common = dict(lr=lr, wd=wd,
                      initial_lr=None if initial_lr is None else float(initial_lr))
        return _hyper_of_kind(entry.equilibrium, group, common)
    if type(optimizer) is torch.optim.SGD:
        return _momentum_hyper("sgd", group, lr=lr, wd=wd)
    if type(optimizer) in (torch.optim.Adam, torch.optim.AdamW):
        decoupled = type(optimizer) is torch.optim.AdamW or group.get("decoupled_weight_decay")
        if not decoupled or group.get("amsgrad", False):
            return None
        return Hyper("adamw", betas=_betas(group), lr=lr, wd=wd)
    return None


def predict(
    h: Hyper, numel: int, grad_norm_unit: float | None = None
) -> tuple[float, float | None]:
    """(θ̂, ‖ŵ‖ or None) for a tensor of `numel` elements under hyperparameters `h`."""
    return _angle(h), _norm(h, numel, grad_norm_unit)
