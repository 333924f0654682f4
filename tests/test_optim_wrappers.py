"""The wrappers' invariants, and resuming every new optimizer and wrapper from a state_dict.

Resuming: save at step k (torch.save/torch.load, weights_only), load into a fresh model,
optimizer and LR scheduler, continue; the result must equal an uninterrupted run bit for bit.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch

import wdlab
from wdlab.monitor.equilibrium import predicted_angle
from wdlab.optim import SCALE, SGDW, AdamW, FAdam, Lion, NovoGrad
from wdlab.optim.wrappers import (
    LAWN,
    CautiousUpdate,
    CautiousWeightDecay,
    NaP,
    NormGrowthLimiter,
    RotationalWrapper,
)

torch.set_num_threads(1)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8, bias=False), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3)
    )


def _groups(model: torch.nn.Module, lr: float = 1e-2, wd: float = 0.1) -> list[dict[str, Any]]:
    return wdlab.param_groups(model, lr, wd)


def _set_grads(model: torch.nn.Module, step: int, scale: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * scale


FACTORIES: dict[str, Callable[[torch.nn.Module], torch.optim.Optimizer]] = {
    "novograd": lambda m: NovoGrad(m.parameters(), lr=1e-2, weight_decay=0.1),
    "novograd_paper": lambda m: NovoGrad(
        m.parameters(), lr=1e-2, weight_decay=0.1, decay="independent", decay_in_momentum=True
    ),
    "fadam": lambda m: FAdam(m.parameters(), lr=1e-2),
    "scale": lambda m: SCALE(_groups(m), lr=1e-2, weight_decay=0.1),
    "nap": lambda m: NaP(AdamW(_groups(m))),
    "rotational": lambda m: RotationalWrapper(AdamW(_groups(m))),
    "lawn": lambda m: LAWN(AdamW(_groups(m)), warmup=3),
    "limiter": lambda m: NormGrowthLimiter(SGDW(m.parameters(), lr=0.1, momentum=0.9)),
    "cautious": lambda m: CautiousWeightDecay(Lion(m.parameters(), lr=1e-3, weight_decay=1.0)),
    "nested": lambda m: CautiousWeightDecay(NaP(AdamW(_groups(m)))),
    "cautious_update": lambda m: CautiousUpdate(
        AdamW(_groups(m), decay="corrected", decay_to="ema", decay_ema=0.9)
    ),
}


def _run(model: torch.nn.Module, opt: Any, sched: Any, steps: range) -> None:
    for step in steps:
        # Gradient scale varies so that the limiter engages.
        _set_grads(model, step, scale=3.0 if step % 4 == 2 else 1.0)
        opt.step()
        sched.step()


def _make(name: str, model: torch.nn.Module) -> tuple[Any, Any]:
    opt = FACTORIES[name](model)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.1 * s))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_resume_from_state_dict_equals_uninterrupted_run(name: str) -> None:
    total, k = 10, 4
    model = _model()
    opt, sched = _make(name, model)
    _run(model, opt, sched, range(total))
    expected = [p.detach().clone() for p in model.parameters()]

    model = _model()
    opt, sched = _make(name, model)
    _run(model, opt, sched, range(k))
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model = _model()
    opt, sched = _make(name, model)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    _run(model, opt, sched, range(k, total))
    for got, want in zip(model.parameters(), expected, strict=True):
        assert torch.equal(got.detach(), want)


@pytest.mark.parametrize("per", ["tensor", "neuron"])
def test_nap_keeps_norms_constant(per: str) -> None:
    model = _model()
    weight = model[0].weight
    before = weight.detach().norm(dim=1 if per == "neuron" else None)
    opt = NaP(AdamW(_groups(model, lr=0.05)), per=per)
    for step in range(20):
        _set_grads(model, step)
        opt.step()
    after = weight.detach().norm(dim=1 if per == "neuron" else None)
    torch.testing.assert_close(after, before, rtol=1e-6, atol=0)
    assert not torch.allclose(model[2].weight.norm(), torch.tensor(1.0))  # others are free


def _angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    return torch.arccos(cos.clamp(-1, 1))


def test_rotational_angle_is_the_equilibrium_angle_from_step_one() -> None:
    lr, wd, betas = 1e-2, 0.1, (0.9, 0.999)
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(64, 256, dtype=torch.float64))
    norms0 = weight.detach().norm(dim=1)
    opt = RotationalWrapper(
        AdamW([{"params": [weight], "scale_invariant": True}], lr=lr, betas=betas, weight_decay=wd)
    )
    target = predicted_angle("adamw", lr, wd, betas=betas)
    # REFERENCE §2's closed form, which the refined prediction should be close to.
    closed = math.sqrt(2 * lr * wd * (1 - betas[0]) / (1 + betas[0]))
    assert abs(target / closed - 1) < 0.05
    angles = []
    for step in range(80):
        before = weight.detach().clone()
        _set_grads_for([weight], step)
        opt.step()
        angles.append(_angles(before, weight.detach()))
        torch.testing.assert_close(weight.detach().norm(dim=1), norms0, rtol=1e-12, atol=0)
    torch.testing.assert_close(angles[0], torch.full_like(angles[0], target), rtol=1e-9, atol=0)
    # Later the EMA-normalized step size fluctuates around the target; while Adam's update norm
    # is still shrinking (its momentum filling up) the lagging EMA makes steps a bit smaller.
    rms = float(torch.stack(angles[40:]).square().mean().sqrt())
    assert abs(rms / target - 1) < 0.05


def _set_grads_for(params: list[torch.Tensor], step: int) -> None:
    gen = torch.Generator().manual_seed(100 + step)  # not the weights' seed
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def test_limiter_never_lets_the_update_norm_grow_faster_than_gamma() -> None:
    gamma = 1.01
    weight = torch.nn.Parameter(torch.randn(40, 30))
    inner = torch.optim.SGD([weight], lr=0.1)
    opt = NormGrowthLimiter(inner, gamma=gamma)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 + 0.5 * s)  # lr grows fast
    norms, capped = [], 0
    for step in range(12):
        before = weight.detach().clone()
        gen = torch.Generator().manual_seed(step)
        weight.grad = torch.randn(40, 30, generator=gen) * (5.0 if step in (3, 7) else 1.0)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        norm = float((weight.detach() - before).norm()) / lr
        capped += norm < float(weight.grad.norm()) * (1 - 1e-6)
        norms.append(norm)
        sched.step()
    ratios = [b / a for a, b in zip(norms, norms[1:], strict=False)]
    assert max(ratios) <= gamma * (1 + 1e-6)
    assert capped >= 2  # the cap engaged at the jumps


def test_cautious_decay_touches_only_agreeing_coordinates() -> None:
    lr, wd = 0.01, 0.5
    torch.manual_seed(0)
    w0 = torch.randn(200)
    wrapped = torch.nn.Parameter(w0.clone())
    plain = torch.nn.Parameter(w0.clone())  # same optimizer without any decay
    opt = CautiousWeightDecay(AdamW([wrapped], lr=lr, weight_decay=wd))
    ref = AdamW([plain], lr=lr, weight_decay=0.0)
    for step in range(5):
        gen = torch.Generator().manual_seed(100 + step)  # not w0's seed
        g = torch.randn(200, generator=gen)
        before = wrapped.detach().clone()
        plain.data.copy_(before)
        wrapped.grad, plain.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        update = plain.detach() - before  # = -lr*u
        agree = update * before < 0
        expected = plain.detach() - lr * wd * before * agree
        torch.testing.assert_close(wrapped.detach(), expected, rtol=0, atol=1e-7)
        assert torch.equal(wrapped.detach()[~agree], plain.detach()[~agree])
        assert 0 < int(agree.sum()) < 200
    assert opt.param_groups[0]["weight_decay"] == wd  # restored after each step


def test_lawn_fixes_output_norms_after_the_warm_phase() -> None:
    model = _model()
    opt = LAWN(AdamW(_groups(model, lr=0.05)), warmup=3)
    head = model[2].weight
    norms = []
    for step in range(8):
        _set_grads(model, step)
        opt.step()
        norms.append(float(head.detach().norm()))
    assert len({round(n, 6) for n in norms[:3]}) == 3  # free during the warm phase
    for n in norms[3:]:
        assert abs(n - norms[2]) <= 1e-6 * norms[2]


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda m: NormGrowthLimiter(AdamW(m.parameters()), gamma=0.9), "gamma"),
        (lambda m: LAWN(AdamW(_groups(m)), warmup=-1), "warmup"),
        (lambda m: NaP(AdamW(_groups(m)), per="row"), "per"),
        (lambda m: RotationalWrapper(AdamW(_groups(m)), angle=-0.1), "angle"),
        (lambda m: RotationalWrapper(AdamW(_groups(m, wd=0.0))), "angle"),
        (lambda m: NaP(torch.nn.Linear(2, 2)), "optimizer"),
        (lambda m: NaP(AdamW(m.parameters())), "params"),
        (lambda m: NaP(AdamW(_groups(m)), params=[torch.nn.Parameter(torch.ones(1))]), "params"),
        (lambda m: CautiousWeightDecay(AdamW(m.parameters(), decay="l2")), "decay"),
    ],
)
def test_bad_arguments_name_the_argument(make: Callable[..., Any], name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(name)):
        make(_model())
