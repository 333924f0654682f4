"""wdlab SCALE against its per-role formula written out here, and its state (only the head's)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

from wdlab.optim.scale import SCALE

torch.set_num_threads(1)

LR, MOM, WD, EPS, BETAS = 0.02, 0.9, 0.3, 1e-8, (0.9, 0.99)
SHAPES = {
    "matrix": (6, 5),
    "conv": (4, 3, 2, 2),
    "embedding": (10, 4),
    "output": (3, 6),
    "bias": (6,),
}


def _schedule(step: int) -> float:
    return 1.0 / (1.0 + 0.3 * step)


def _normalized(d: torch.Tensor, dim: int) -> torch.Tensor:
    rows = d.reshape(d.size(0), -1)
    rms = rows.square().mean(dim=dim, keepdim=True).sqrt().clamp(min=EPS)
    return (rows / rms).reshape(d.shape)


def _reference(name: str, w0: torch.Tensor, grads: list[torch.Tensor], decay: str) -> torch.Tensor:
    w, buf = w0.clone(), torch.zeros_like(w0)
    m, v = torch.zeros_like(w0), torch.zeros_like(w0)
    for t, g in enumerate(grads, start=1):
        lr = LR * _schedule(t - 1)
        c = {"decoupled": lr * WD, "independent": (lr / LR) * WD, "l2": 0.0}[decay]
        if decay == "l2":
            g = g + WD * w
        w = w * (1 - c)
        if name == "bias":  # AdamW
            m = BETAS[0] * m + (1 - BETAS[0]) * g
            v = BETAS[1] * v + (1 - BETAS[1]) * g * g
            denom = (v / (1 - BETAS[1] ** t)).sqrt() + 1e-8
            w = w - lr * (m / (1 - BETAS[0] ** t)) / denom
            continue
        if name == "output":
            buf = MOM * buf + (1 - MOM) * g
            g = buf
        w = w - lr * _normalized(g, 0 if name == "embedding" else 1)
    return w


def _groups(params: dict[str, torch.nn.Parameter]) -> list[dict[str, Any]]:
    role = {"conv": "matrix"}
    return [{"params": [p], "role": role.get(name, name)} for name, p in params.items()]


@pytest.mark.parametrize("decay", ["decoupled", "independent", "l2"])
def test_each_role_matches_formula(decay: str) -> None:
    gen = torch.Generator().manual_seed(1)
    w0 = {n: torch.randn(*s, generator=gen, dtype=torch.float64) for n, s in SHAPES.items()}
    grads = {
        n: [torch.randn(*s, generator=gen, dtype=torch.float64) for _ in range(8)]
        for n, s in SHAPES.items()
    }
    params = {n: torch.nn.Parameter(w.clone()) for n, w in w0.items()}
    opt = SCALE(
        _groups(params), lr=LR, momentum=MOM, weight_decay=WD, decay=decay, adamw_betas=BETAS
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule)
    for step in range(8):
        for n, p in params.items():
            p.grad = grads[n][step].clone()
        opt.step()
        sched.step()
    for n, p in params.items():
        expected = _reference(n, w0[n], grads[n], decay)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12, msg=n)


def test_only_the_output_layer_and_vectors_keep_state() -> None:
    params = {n: torch.nn.Parameter(torch.randn(*s)) for n, s in SHAPES.items()}
    opt = SCALE(_groups(params))
    for p in params.values():
        p.grad = torch.randn_like(p)
    opt.step()
    assert set(opt.state[params["output"]]) == {"momentum_buffer"}
    assert set(opt.state[params["bias"]]) == {"step", "exp_avg", "exp_avg_sq"}
    for name in ("matrix", "conv", "embedding"):
        assert not opt.state[params[name]]


def test_large_matrix_uses_blocks_and_matches_formula() -> None:
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(900, 400, generator=gen, dtype=torch.float64)
    grads = [torch.randn(900, 400, generator=gen, dtype=torch.float64) for _ in range(2)]
    p = torch.nn.Parameter(w0.clone())
    opt = SCALE([{"params": [p], "role": "matrix"}], lr=LR, weight_decay=WD)
    for g in grads:
        p.grad = g
        opt.step()
    # No scheduler here: constant lr in the reference too.
    w = w0.clone()
    for g in grads:
        w = w * (1 - LR * WD) - LR * _normalized(g, 1)
    torch.testing.assert_close(p.detach(), w, rtol=1e-10, atol=1e-12)


def test_groups_without_role_are_refused() -> None:
    with pytest.raises(ValueError, match="role"):
        SCALE([torch.nn.Parameter(torch.zeros(2, 2))])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1.0}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"eps": 0.0}, "eps"),
        ({"adamw_betas": (0.9,)}, "adamw_betas"),
        ({"adamw_eps": -1.0}, "adamw_eps"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"decay": "x"}, "decay"),
        ({"mode": "x"}, "mode"),
    ],
)
def test_bad_hyperparameters_name_the_argument(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(name)):
        SCALE([{"params": [torch.nn.Parameter(torch.zeros(2, 2))], "role": "matrix"}], **kwargs)
