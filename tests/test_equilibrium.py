"""Validation: the Monitor's measured equilibrium angular update matches its prediction.

A scale-invariant tensor gets random gradients orthogonal to it with size 1/‖w‖ (what a
weight feeding a normalization gets, REFERENCE §2). Each optimizer runs ~9 relaxation
times 1/(2d) from a start whose norm is 2× off equilibrium; the mean angle the Monitor
measures over the last quarter must be within 5% of equilibrium.predicted_angle.
wdlab optimizers that do not import yet are skipped (the skip message names them).
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

from wdlab.monitor import Monitor, predicted_angle, predicted_norm

ROWS, COLS = 4, 512
STEPS, EVERY = 2400, 5


def _wdlab(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"wdlab.optim.{name} not importable yet ({type(exc).__name__}: {exc})")


def _run(make_opt, kind: str, lr: float, wd: float, **hp) -> tuple[float, float]:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1)
    model = nn.Module()
    model.weight = nn.Parameter(torch.randn(ROWS, COLS, generator=gen))
    # start 2x away from the equilibrium norm (‖g̃‖² ≈ C for these gradients)
    start = 2 * predicted_norm(
        kind, lr, wd, numel=ROWS * COLS, grad_norm_unit=math.sqrt(ROWS * COLS), **hp
    )
    with torch.no_grad():
        model.weight.mul_(start / model.weight.norm())
    group = {"params": [model.weight], "role": "matrix", "scale_invariant": True}
    opt = make_opt([group])
    angles: list[float] = []
    mon = Monitor(
        model,
        opt,
        every=EVERY,
        sink=lambda step, m: (
            angles.append(m["mon/angle/weight"]) if step > STEPS * 3 // 4 else None
        ),
    )
    w = model.weight
    for step in range(1, STEPS + 1):
        mon.before_forward(step)
        with torch.no_grad():
            z = torch.randn(w.shape, generator=gen)
            norm = w.norm()
            w.grad = (z - w * (w * z).sum() / norm**2) / norm  # ⟂ w, size ∝ 1/‖w‖
        opt.step()
        mon.step(step)
    pred = mon.latest["mon/angle_pred/weight"]
    assert pred == pytest.approx(predicted_angle(kind, lr, wd, **hp))
    return sum(angles) / len(angles), pred


def _check(measured: float, pred: float) -> None:
    assert abs(measured / pred - 1) < 0.05, f"measured {measured:.5f} vs predicted {pred:.5f}"


def test_sgd_momentum_coupled_l2():
    lr, wd, mom = 0.1, 0.002, 0.9  # d = lr*wd/(1-mom) = 2e-3
    measured, pred = _run(
        lambda g: torch.optim.SGD(g, lr=lr, momentum=mom, weight_decay=wd),
        "sgd",
        lr,
        wd,
        momentum=mom,
    )
    _check(measured, pred)
    print(f"measured/predicted = {measured / pred:.4f}")
    assert pred == pytest.approx(math.sqrt(2 * lr * wd / (1 + mom)), rel=0.01)  # REFERENCE §2


def test_torch_adamw():
    lr, wd = 0.02, 0.1
    measured, pred = _run(
        lambda g: torch.optim.AdamW(g, lr=lr, weight_decay=wd), "adamw", lr, wd, betas=(0.9, 0.999)
    )
    _check(measured, pred)
    print(f"measured/predicted = {measured / pred:.4f}")
    assert pred == pytest.approx(math.sqrt(2 * lr * wd * 0.1 / 1.9), rel=0.01)  # REFERENCE §2


def test_wdlab_adamw():
    cls = _wdlab("wdlab.optim.adamw", "AdamW")
    lr, wd = 0.02, 0.1
    measured, pred = _run(
        lambda g: cls(g, lr=lr, weight_decay=wd, betas=(0.9, 0.999)),
        "adamw",
        lr,
        wd,
        betas=(0.9, 0.999),
    )
    _check(measured, pred)
    print(f"measured/predicted = {measured / pred:.4f}")


def test_wdlab_sgdw_decoupled():
    cls = _wdlab("wdlab.optim.sgdw", "SGDW")
    lr, wd, mom = 0.1, 0.02, 0.9
    measured, pred = _run(
        lambda g: cls(g, lr=lr, momentum=mom, weight_decay=wd), "sgdw", lr, wd, momentum=mom
    )
    _check(measured, pred)
    print(f"measured/predicted = {measured / pred:.4f}")


def test_wdlab_lion():
    cls = _wdlab("wdlab.optim.lion", "Lion")
    lr, wd = 0.002, 1.0
    measured, pred = _run(
        lambda g: cls(g, lr=lr, weight_decay=wd, betas=(0.9, 0.99)),
        "lion",
        lr,
        wd,
        betas=(0.9, 0.99),
    )
    _check(measured, pred)
    print(f"measured/predicted = {measured / pred:.4f}")


def test_wdlab_adamp():
    cls = _wdlab("wdlab.optim.adamp", "AdamP")
    lr, wd = 0.04, 0.5  # d = lr*wd*wd_ratio = 2e-3
    measured, pred = _run(lambda g: cls(g, lr=lr, weight_decay=wd), "adamp", lr, wd)
    _check(measured, pred)
    print(f"measured/predicted = {measured / pred:.4f}")
    assert pred == pytest.approx(math.sqrt(2 * lr * wd * 0.1), rel=0.01)  # no β1 factor


def test_wdlab_sgdp():
    cls = _wdlab("wdlab.optim.adamp", "SGDP")
    lr, wd, mom = 0.01, 0.2, 0.9  # d = lr*wd*0.1/(1-mom) = 2e-3
    measured, pred = _run(
        lambda g: cls(g, lr=lr, momentum=mom, weight_decay=wd), "sgdp", lr, wd, momentum=mom
    )
    _check(measured, pred)
    print(f"measured/predicted = {measured / pred:.4f}")


def test_lion_series_agrees_with_reference_closed_form():
    """REFERENCE §2's Lion formula is the small-ηλ, small-variance limit of the series."""
    lr, wd, b1, b2 = 1e-5, 1.0, 0.9, 0.99
    closed = (
        math.sqrt(math.pi / 2)
        * math.sqrt(2 * lr * wd)
        * math.sqrt((1 - b1) ** 2 + b1**2 * (1 - b2) / (1 + b2))
    )
    assert predicted_angle("lion", lr, wd, betas=(b1, b2)) == pytest.approx(closed, rel=0.03)


def test_independent_decay_uses_schedule_multiplier():
    a = predicted_angle("adamw", 0.01, 0.1, decay="independent", initial_lr=0.02)
    # d = (lr/initial_lr)*wd = 0.05 here, vs lr*wd = 1e-3 for decoupled
    b = predicted_angle("adamw", 1.0, 0.05, betas=(0.9, 0.999))
    assert a == pytest.approx(b)


def test_unknown_kind_names_the_choices():
    with pytest.raises(ValueError, match="optimizer kind must be one of"):
        predicted_angle("rmsprop", 0.1, 0.1)


@pytest.mark.parametrize("decay", ["decoupled", "corrected"])
def test_grad_to_weight_ratio_settles_where_predicted(decay: str) -> None:
    """Defazio et al. 2025: at a quarter of the peak lr, plain SGD's ‖g‖/‖w‖ settles at
    sqrt(2λ/η_t) with decoupled decay and at sqrt(2λ/η_max) (half of it) with corrected."""
    from wdlab.optim import SGDW

    torch.set_num_threads(1)
    peak, lam, mult, steps = 0.4, 0.1, 0.25, 1600
    gen = torch.Generator().manual_seed(2)
    model = nn.Module()
    model.weight = nn.Parameter(torch.randn(ROWS, COLS, generator=gen))
    group = {"params": [model.weight], "role": "matrix", "scale_invariant": True}
    opt = SGDW([group], lr=peak, momentum=0.0, weight_decay=lam, decay=decay)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda s: mult)
    ratios: list[float] = []
    mon = Monitor(model, opt, every=10, sink=lambda step, m: (
        ratios.append(m["mon/gw_ratio/weight"]) if step > steps * 3 // 4 else None))
    w = model.weight
    for step in range(1, steps + 1):
        mon.before_forward(step)
        with torch.no_grad():
            z = torch.randn(w.shape, generator=gen)
            norm = w.norm()
            w.grad = (z - w * (w * z).sum() / norm**2) / norm
        opt.step()
        mon.step(step)
    eta = peak * mult
    expected = math.sqrt(2 * lam / (peak if decay == "corrected" else eta))
    assert mon.latest["mon/gw_pred/weight"] == pytest.approx(expected, rel=0.02)
    measured = sum(ratios) / len(ratios)
    assert abs(measured - 1) < 0.05, f"measured/predicted ‖g‖/‖w‖ = {measured:.4f}"
