"""wdlab NovoGrad against the paper's per-layer formula written out here, in every decay mode."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

from wdlab.optim.novograd import NovoGrad

torch.set_num_threads(1)

LR, BETAS, EPS, WD = 0.05, (0.9, 0.98), 1e-8, 0.3


def _schedule(step: int) -> float:
    return 1.0 / (1.0 + 0.3 * step)


def _reference(
    w0: torch.Tensor, grads: list[torch.Tensor], decay: str, averaging: bool, in_m: bool
) -> torch.Tensor:
    b1, b2 = BETAS
    w, m, v = w0.clone(), torch.zeros_like(w0), 0.0
    for t, g in enumerate(grads):
        lr = LR * _schedule(t)
        c = {"decoupled": lr * WD, "independent": (lr / LR) * WD, "l2": 0.0}[decay]
        if decay == "l2":
            g = g + WD * w
        norm_sq = float((g * g).sum())
        v = norm_sq if t == 0 else b2 * v + (1 - b2) * norm_sq
        d = g / (v**0.5 + EPS)
        if in_m:
            d = d + (c / lr) * w
        m = d if t == 0 else b1 * m + (1 - b1 if averaging else 1.0) * d
        if not in_m:
            w = w * (1 - c)
        w = w - lr * m
    return w


def _run(ws: list[torch.Tensor], grads: list[list[torch.Tensor]], **kw: Any) -> list[torch.Tensor]:
    params = [torch.nn.Parameter(w.clone()) for w in ws]
    opt = NovoGrad(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule)
    for step in range(len(grads[0])):
        for p, gs in zip(params, grads, strict=True):
            p.grad = gs[step].clone()
        opt.step()
        sched.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("averaging", [False, True])
@pytest.mark.parametrize("decay", ["decoupled", "independent", "l2"])
def test_matches_formula_per_layer(decay: str, averaging: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    # Two layers whose gradients differ 1000x in scale: each must get its own second moment.
    ws = [torch.randn(5, 4, generator=gen, dtype=torch.float64) for _ in range(2)]
    grads = [
        [torch.randn(5, 4, generator=gen, dtype=torch.float64) * s for _ in range(15)]
        for s in (1e-3, 1.0)
    ]
    got = _run(ws, grads, decay=decay, grad_averaging=averaging)
    for w, gs, out in zip(ws, grads, got, strict=True):
        expected = _reference(w, gs, decay, averaging, in_m=False)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("decay", ["decoupled", "independent"])
def test_paper_decay_inside_momentum(decay: str) -> None:
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    gs = [torch.randn(7, 3, generator=gen, dtype=torch.float64) for _ in range(12)]
    (got,) = _run([w], [gs], decay=decay, decay_in_momentum=True)
    torch.testing.assert_close(got, _reference(w, gs, decay, False, in_m=True), rtol=1e-10, atol=0)
    assert not torch.allclose(got, _reference(w, gs, decay, False, in_m=False), rtol=1e-6)


def test_chunked_path_on_a_large_tensor_matches_formula() -> None:
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(700, 500, generator=gen, dtype=torch.float64)  # > one block of 2^18
    gs = [torch.randn(700, 500, generator=gen, dtype=torch.float64) for _ in range(3)]
    (got,) = _run([w], [gs], decay="decoupled")
    torch.testing.assert_close(got, _reference(w, gs, "decoupled", False, False), rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1.0}, "lr"),
        ({"betas": (0.9, 1.0)}, "betas[1]"),
        ({"eps": 0.0}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"decay": "coupled"}, "decay"),
        ({"grad_averaging": 1}, "grad_averaging"),
        ({"decay_in_momentum": True, "decay": "l2"}, "decay_in_momentum"),
        ({"mode": "fast"}, "mode"),
    ],
)
def test_bad_hyperparameters_name_the_argument(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(name)):
        NovoGrad([torch.nn.Parameter(torch.zeros(2))], **kwargs)
