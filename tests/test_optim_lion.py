"""wdlab Lion against the Lion formula written out here, and its box ||w||_inf <= 1/wd."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from wdlab.optim.lion import Lion

torch.set_num_threads(1)

LR, BETAS, WD = 1e-2, (0.9, 0.99), 0.5


def _schedule(step: int) -> float:
    return 1.0 / (1.0 + 0.3 * step)


def _reference(w0: torch.Tensor, grads: list[torch.Tensor], decay: str) -> torch.Tensor:
    b1, b2 = BETAS
    w, m = w0.double().clone(), torch.zeros_like(w0, dtype=torch.float64)
    for t, g in enumerate(grads):
        lr = LR * _schedule(t)
        g = g.double()
        if decay == "l2":
            g = g + WD * w
        elif decay == "decoupled":
            w = w * (1 - lr * WD)
        else:
            w = w * (1 - (lr / LR) * WD)
        c = b1 * m + (1 - b1) * g
        w = w - lr * torch.sign(c)
        m = b2 * m + (1 - b2) * g
    return w


def _run(w0: torch.Tensor, grads: list[torch.Tensor], **kw: Any) -> torch.Tensor:
    w = torch.nn.Parameter(w0.clone())
    opt = Lion([w], lr=LR, betas=BETAS, weight_decay=WD, **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule)
    for g in grads:
        w.grad = g.clone()
        opt.step()
        sched.step()
    return w.detach()


@pytest.mark.parametrize("mode", ["chunked", "whole"])
@pytest.mark.parametrize("decay", ["decoupled", "independent", "l2"])
def test_matches_formula_in_every_decay_mode(decay: str, mode: str) -> None:
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(6, 4, generator=gen, dtype=torch.float64) * 4
    grads = [torch.randn(6, 4, generator=gen, dtype=torch.float64) for _ in range(30)]
    got = _run(w0, grads, decay=decay, mode=mode)
    torch.testing.assert_close(got, _reference(w0, grads, decay), rtol=1e-10, atol=1e-12)
    other = "independent" if decay != "independent" else "decoupled"
    assert not torch.allclose(got, _reference(w0, grads, other), rtol=1e-6, atol=0)


def test_update_has_size_lr_per_coordinate() -> None:
    """Without decay each coordinate with a nonzero gradient moves by exactly lr."""
    gen = torch.Generator().manual_seed(2)
    w = torch.nn.Parameter(torch.randn(50, generator=gen, dtype=torch.float64))
    before = w.detach().clone()
    opt = Lion([w], lr=0.05)
    w.grad = torch.randn(50, generator=gen, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(
        (w.detach() - before).abs(), torch.full((50,), 0.05, dtype=torch.float64)
    )
    assert torch.equal(torch.sign(before - w.detach()), torch.sign(w.grad))


def test_decoupled_decay_pulls_every_coordinate_into_the_box() -> None:
    """Lion with decoupled wd solves min f s.t. ||w||_inf <= 1/wd (REFERENCE.md §3)."""
    wd, lr, steps = 2.0, 0.02, 500
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(2000, generator=gen) * 0.2
    w0[:100] = 5 / wd  # far outside the box, both signs
    w0[100:200] = -5 / wd
    w = torch.nn.Parameter(w0)
    opt = Lion([w], lr=lr, weight_decay=wd)
    for _ in range(steps):
        w.grad = torch.randn(2000, generator=gen) - 0.5 * torch.sign(w.detach())  # pushes outward
        opt.step()
    # Fixed point of |w| <- |w|*(1 - lr*wd) + lr is exactly 1/wd; the start decays as (1-lr*wd)^t.
    slack = lr + (5 / wd) * (1 - lr * wd) ** steps
    assert w.detach().abs().max() <= 1 / wd + slack
    assert w.detach()[:200].abs().min() > 0.5 / wd  # the outward push holds them near the wall
