"""wdlab SGDW against the SGD-momentum formula written out here, and against torch.optim.SGD."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from wdlab.optim._dispatch import LEGACY_MODES
from wdlab.optim.sgdw import SGDW

torch.set_num_threads(1)

LR, WD = 0.1, 0.3


def _schedule(step: int) -> float:
    return 1.0 / (1.0 + 0.3 * step)


def _grads(shape: tuple[int, ...], steps: int, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    return [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(steps)]


def _reference(
    w0: torch.Tensor,
    grads: list[torch.Tensor],
    decay: str,
    momentum: float,
    dampening: float,
    nesterov: bool,
) -> torch.Tensor:
    """Decay first, then buf = g (first step) or mu*buf + (1-d)*g; step buf or g + mu*buf."""
    w, buf = w0.double().clone(), None
    for t, g in enumerate(grads):
        lr = LR * _schedule(t)
        g = g.double()
        if decay == "l2":
            g = g + WD * w
        elif decay == "decoupled":
            w = w * (1 - lr * WD)
        else:
            w = w * (1 - (lr / LR) * WD)
        if momentum:
            buf = g.clone() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        w = w - lr * g
    return w


def _run(opt_cls: Any, w0: torch.Tensor, grads: list[torch.Tensor], **kw: Any) -> torch.Tensor:
    w = torch.nn.Parameter(w0.clone())
    opt = opt_cls([w], lr=LR, weight_decay=WD, **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule)
    for g in grads:
        w.grad = g.clone()
        opt.step()
        sched.step()
    return w.detach()


MOMENTA = [
    {"momentum": 0.9, "dampening": 0.0, "nesterov": False},
    {"momentum": 0.9, "dampening": 0.0, "nesterov": True},
    {"momentum": 0.5, "dampening": 0.3, "nesterov": False},
    {"momentum": 0.0, "dampening": 0.0, "nesterov": False},
]


@pytest.mark.parametrize("mom", MOMENTA, ids=lambda m: "-".join(f"{k}{v}" for k, v in m.items()))
@pytest.mark.parametrize("decay", ["decoupled", "independent", "l2"])
def test_matches_formula_in_every_decay_mode(decay: str, mom: dict[str, Any]) -> None:
    w0 = torch.randn(7, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = _grads((7, 3), 20, torch.float64)
    got = _run(SGDW, w0, grads, decay=decay, **mom)
    torch.testing.assert_close(got, _reference(w0, grads, decay, **mom), rtol=1e-10, atol=1e-12)
    other = "independent" if decay != "independent" else "decoupled"
    assert not torch.allclose(got, _reference(w0, grads, other, **mom), rtol=1e-6, atol=0)


@pytest.mark.parametrize("mom", MOMENTA, ids=lambda m: "-".join(f"{k}{v}" for k, v in m.items()))
def test_l2_equals_torch_sgd_bit_for_bit(mom: dict[str, Any]) -> None:
    # Big enough for the chunked path to cut it into blocks; rows not a multiple of 16 floats.
    # "chunked" keeps torch's op order; "auto" may pick the C kernel, equal only to rounding.
    w0 = torch.randn(333, 1001, generator=torch.Generator().manual_seed(2))
    grads = _grads((333, 1001), 6, torch.float32)
    ours = _run(SGDW, w0, grads, decay="l2", mode="chunked", **mom)
    theirs = _run(torch.optim.SGD, w0, grads, **mom)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("mom", MOMENTA, ids=lambda m: "-".join(f"{k}{v}" for k, v in m.items()))
def test_l2_native_equals_torch_sgd_to_float_rounding(mom: dict[str, Any]) -> None:
    """The one-pass C kernel rounds a*b + c differently from torch's op chain, never more."""
    from wdlab.optim import _native as native

    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.why_unavailable()}")
    w0 = torch.randn(61, 37, generator=torch.Generator().manual_seed(2))
    grads = _grads((61, 37), 6, torch.float32)
    ours = _run(SGDW, w0, grads, decay="l2", mode="native", **mom)
    theirs = _run(torch.optim.SGD, w0, grads, **mom)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    # Not vacuous: the run moved the weights far beyond that tolerance.
    assert (theirs - w0).abs().max() > 1e-2


def test_decoupled_differs_from_l2_only_through_the_decay() -> None:
    """Decoupled SGD with momentum is not L2: the decay must stay out of the buffer."""
    w0 = torch.randn(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = _grads((5,), 10, torch.float64)
    decoupled = _run(SGDW, w0, grads, decay="decoupled")
    l2 = _run(SGDW, w0, grads, decay="l2")
    assert not torch.allclose(decoupled, l2, rtol=1e-6, atol=0)


ROUND_TRIPS = [
    ("torch_to_wdlab", "chunked"),
    ("wdlab_to_torch", "chunked"),
    ("torch_to_wdlab", "auto"),
    ("wdlab_to_torch", "auto"),
]


@pytest.mark.parametrize(("direction", "mode"), ROUND_TRIPS)
def test_state_dict_moves_between_wdlab_l2_and_torch_sgd(direction: str, mode: str) -> None:
    """mode "chunked" is torch.optim.SGD bit for bit, so the round trip must be exact; "auto"
    (the C kernel where it runs) equals it to float rounding."""
    w0 = torch.randn(9, 4, generator=torch.Generator().manual_seed(4))
    grads = _grads((9, 4), 16, torch.float32)
    kinds: list[Any] = [torch.optim.SGD, SGDW]
    if direction == "wdlab_to_torch":
        kinds.reverse()
    extra = {SGDW: {"decay": "l2", "mode": mode}, torch.optim.SGD: {}}
    uninterrupted = _run(torch.optim.SGD, w0, grads, momentum=0.9, nesterov=True)

    w = torch.nn.Parameter(w0.clone())
    opt = kinds[0]([w], lr=LR, weight_decay=WD, momentum=0.9, nesterov=True, **extra[kinds[0]])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule)
    for g in grads[:7]:
        w.grad = g.clone()
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert set(saved["opt"]["state"][0]) == {"momentum_buffer"}

    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = kinds[1]([w2], lr=5.0, momentum=0.9, nesterov=True, **extra[kinds[1]])
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, _schedule)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    if kinds[1] is SGDW:
        # torch's groups carry no "impl": WdOptimizer.__setstate__ fills it from SGDW's
        # defaults, so the mode given to the constructor (mode= is impl's older name)
        # survives the load.
        assert opt2.param_groups[0]["impl"] == LEGACY_MODES[mode]
    for g in grads[7:]:
        w2.grad = g.clone()
        opt2.step()
        sched2.step()
    if mode == "chunked":
        assert torch.equal(w2.detach(), uninterrupted)
    else:
        torch.testing.assert_close(w2.detach(), uninterrupted, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(w2.detach(), w.detach(), rtol=1e-3, atol=0)
