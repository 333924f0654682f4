"""wdlab FAdam against the paper's Algorithm 1 written out here (clips engaged on purpose)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

from wdlab.optim.fadam import FAdam

torch.set_num_threads(1)

LR, BETAS, EPS, WD, CLIP = 0.01, (0.9, 0.99), 1e-8, 0.2, 0.5


def _schedule(step: int) -> float:
    return 1.0 / (1.0 + 0.3 * step)


def _rms(x: torch.Tensor) -> float:
    return float(x.square().mean().sqrt())


def _reference(
    w0: torch.Tensor, grads: list[torch.Tensor], decay: str, power: float, clipped: list[bool]
) -> torch.Tensor:
    b1, b2 = BETAS
    w, m, f = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    for t, g in enumerate(grads, start=1):
        lr = LR * _schedule(t - 1)
        c = {"decoupled": lr * WD, "independent": (lr / LR) * WD, "l2": 0.0}[decay]
        if decay == "l2":
            g = g + WD * w
        b2_t = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
        f = b2_t * f + (1 - b2_t) * g * g
        den = f**power + EPS * min(1.0, _rms(g))
        g_nat = g / den
        g_nat = g_nat / max(1.0, _rms(g_nat) / CLIP)
        m = b1 * m + (1 - b1) * g_nat
        w_nat = w / den
        clipped.append(_rms(w_nat) > CLIP)
        w_nat = w_nat / max(1.0, _rms(w_nat) / CLIP)
        w = w - c * w_nat - lr * m
    return w


def _run(w0: torch.Tensor, grads: list[torch.Tensor], **kw: Any) -> torch.Tensor:
    w = torch.nn.Parameter(w0.clone())
    opt = FAdam([w], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, clip=CLIP, **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule)
    for g in grads:
        w.grad = g.clone()
        opt.step()
        sched.step()
    return w.detach()


def _data(shape: tuple[int, ...], steps: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(*shape, generator=gen, dtype=torch.float64)
    # Gradient scale drifts, so f lags g and the w/den term exceeds the clip.
    grads = [
        torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.1 * (1 + k)
        for k in range(steps)
    ]
    return w0, grads


@pytest.mark.parametrize("power", [0.5, 0.25])
@pytest.mark.parametrize("decay", ["decoupled", "independent", "l2"])
def test_matches_algorithm(decay: str, power: float) -> None:
    w0, grads = _data((6, 5), 20, seed=1)
    clipped: list[bool] = []
    expected = _reference(w0, grads, decay, power, clipped)
    got = _run(w0, grads, decay=decay, p=power)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    if decay != "l2":
        assert any(clipped)  # the decay clip was exercised


def test_chunked_path_on_a_large_tensor_matches_algorithm() -> None:
    w0, grads = _data((700, 400), 3, seed=2)  # more than one block of 2^18 elements
    expected = _reference(w0, grads, "decoupled", 0.5, [])
    torch.testing.assert_close(_run(w0, grads), expected, rtol=1e-9, atol=1e-12)


def test_zero_gradient_does_not_produce_nan() -> None:
    w = torch.nn.Parameter(torch.ones(4))
    opt = FAdam([w])
    w.grad = torch.zeros(4)
    opt.step()
    assert torch.isfinite(w.detach()).all()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1.0}, "lr"),
        ({"betas": (1.0, 0.9)}, "betas[0]"),
        ({"eps": 0.0}, "eps"),
        ({"clip": 0.0}, "clip"),
        ({"p": 1.5}, "p"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"decay": "l1"}, "decay"),
        ({"mode": 3}, "mode"),
    ],
)
def test_bad_hyperparameters_name_the_argument(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(name)):
        FAdam([torch.nn.Parameter(torch.zeros(2))], **kwargs)
