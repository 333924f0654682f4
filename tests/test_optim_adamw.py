"""wdlab AdamW against the Adam formula written out here, and against torch.optim.AdamW."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from wdlab.optim.adamw import AdamW

torch.set_num_threads(1)

LR, BETAS, EPS, WD = 1e-2, (0.9, 0.99), 1e-8, 0.2


def _schedule(step: int) -> float:
    return 1.0 / (1.0 + 0.3 * step)  # lr changes every step, so independent != decoupled


def _grads(shape: tuple[int, ...], steps: int, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(steps)]


def _reference(w0: torch.Tensor, grads: list[torch.Tensor], decay: str) -> torch.Tensor:
    """Adam with bias correction, decay first, in float64, lr from the same schedule."""
    b1, b2 = BETAS
    w, m, v = w0.double().clone(), torch.zeros_like(w0, dtype=torch.float64), None
    v = torch.zeros_like(m)
    for t, g in enumerate(grads, start=1):
        lr = LR * _schedule(t - 1)
        g = g.double()
        if decay == "l2":
            g = g + WD * w
        elif decay == "decoupled":
            w = w * (1 - lr * WD)
        else:  # independent: the schedule multiplier lr/LR, not lr
            w = w * (1 - (lr / LR) * WD)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        w = w - lr * m_hat / (v_hat.sqrt() + EPS)
    return w


def _run(opt_cls: Any, w0: torch.Tensor, grads: list[torch.Tensor], **kw: Any) -> torch.Tensor:
    w = torch.nn.Parameter(w0.clone())
    opt = opt_cls([w], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule)
    for g in grads:
        w.grad = g.clone()
        opt.step()
        sched.step()
    return w.detach()


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("decay", ["decoupled", "independent", "l2"])
def test_matches_formula_in_every_decay_mode(decay: str, fused: bool | None) -> None:
    w0 = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    grads = _grads((6, 5), 25, torch.float64)
    got = _run(AdamW, w0, grads, decay=decay, fused=fused)
    expected = _reference(w0, grads, decay)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # the modes really differ on this schedule (else the test above could not tell them apart)
    other = "independent" if decay != "independent" else "decoupled"
    assert not torch.allclose(got, _reference(w0, grads, other), rtol=1e-6, atol=0)


@pytest.mark.parametrize("torch_fused", [True, False])
def test_decoupled_matches_torch_adamw_bit_for_bit(torch_fused: bool) -> None:
    """fused=None is torch's fused path; fused=False is torch's default single-tensor path."""
    w0 = torch.randn(40, 30, generator=torch.Generator().manual_seed(2))
    grads = _grads((40, 30), 150, torch.float32)
    ours = _run(AdamW, w0, grads, fused=None if torch_fused else False)
    theirs = _run(torch.optim.AdamW, w0, grads, fused=torch_fused)
    assert torch.equal(ours, theirs)
    # and torch's two paths agree to float rounding only: ours follows each exactly.
    other = _run(torch.optim.AdamW, w0, grads, fused=not torch_fused)
    torch.testing.assert_close(ours, other, rtol=1e-5, atol=1e-6)


def test_l2_matches_torch_adam_with_weight_decay() -> None:
    w0 = torch.randn(8, 8, generator=torch.Generator().manual_seed(3))
    grads = _grads((8, 8), 30, torch.float32)
    for fused in (True, False):
        ours = _run(AdamW, w0, grads, decay="l2", fused=None if fused else False)
        theirs = _run(torch.optim.Adam, w0, grads, fused=fused)
        assert torch.equal(ours, theirs)


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(
    ("first", "second"),
    [(AdamW, torch.optim.AdamW), (torch.optim.AdamW, AdamW)],
    ids=["wdlab_to_torch", "torch_to_wdlab"],
)
@pytest.mark.parametrize("fused", [True, False])
def test_state_dict_moves_between_wdlab_and_torch(first: Any, second: Any, fused: bool) -> None:
    w0 = torch.randn(10, 4, generator=torch.Generator().manual_seed(4))
    grads = _grads((10, 4), 20, torch.float32)
    wdlab_fused = None if fused else False
    kw = {
        first: {"fused": fused if first is torch.optim.AdamW else wdlab_fused},
        second: {"fused": fused if second is torch.optim.AdamW else wdlab_fused},
    }
    uninterrupted = _run(first, w0, grads, **kw[first])

    w = torch.nn.Parameter(w0.clone())
    opt = first([w], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, **kw[first])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule)
    for g in grads[:8]:
        w.grad = g.clone()
        opt.step()
        sched.step()
    saved = _roundtrip({"opt": opt.state_dict(), "sched": sched.state_dict()})
    state = saved["opt"]["state"][0]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
    assert state["step"].dtype == torch.float32 and state["step"].ndim == 0
    assert float(state["step"]) == 8.0

    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = second([w2], lr=123.0, weight_decay=0.0, **kw[second])  # the load restores hparams
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, _schedule)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    for g in grads[8:]:
        w2.grad = g.clone()
        opt2.step()
        sched2.step()
    assert torch.equal(w2.detach(), uninterrupted)


def test_torch_state_dict_with_amsgrad_is_refused_at_step() -> None:
    w = torch.nn.Parameter(torch.zeros(3))
    theirs = torch.optim.AdamW([w], amsgrad=True)
    ours = AdamW([w])
    ours.load_state_dict(theirs.state_dict())
    w.grad = torch.ones(3)
    with pytest.raises(ValueError, match=r"amsgrad=False and maximize=False only"):
        ours.step()


def test_other_dtypes_take_the_same_formula() -> None:
    """bfloat16 params (fused kernel) and the plain path agree with float64 to bf16 rounding."""
    w0 = torch.randn(16, generator=torch.Generator().manual_seed(5))
    grads = _grads((16,), 5, torch.float32)
    expected = _reference(w0, grads, "decoupled").float()
    for fused in (None, False):
        got = _run(AdamW, w0.bfloat16(), [g.bfloat16() for g in grads], fused=fused)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-2)
