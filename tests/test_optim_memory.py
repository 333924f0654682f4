"""state_bytes: the layout estimate before the first step equals the state after it."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import wdlab
from wdlab.optim import available, create
from wdlab.optim.memory import state_bytes, state_bytes_per_param
from wdlab.optim.wrappers import NaP, NormGrowthLimiter, RotationalWrapper

torch.set_num_threads(1)

EXTRA: dict[str, dict[str, Any]] = {"sgdw": {"momentum": 0.9}, "sgdp": {"momentum": 0.9}}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Embedding(20, 8),
        torch.nn.Linear(8, 16, bias=False),
        torch.nn.LayerNorm(16),
        torch.nn.Linear(16, 20),
    )


def _measured(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the state, counted here independently of memory.py."""
    total = sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    own = getattr(opt, "wrapper_state", {})
    return total + sum(v.numel() * v.element_size() for s in own.values() for v in s.values())


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()


def _make(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    groups = wdlab.param_groups(model, 1e-3, 0.1)
    return create(name, groups, lr=1e-3, weight_decay=0.1, **EXTRA.get(name, {}))


@pytest.mark.parametrize("name", available())
def test_estimate_before_first_step_equals_state_after(name: str) -> None:
    model = _model()
    opt = _make(name, model)
    before = state_bytes(opt)
    _step(model, opt)
    assert before == _measured(opt) == state_bytes(opt)


@pytest.mark.parametrize("target", ["init", "ema", "one"])
def test_decay_target_copy_is_counted(target: str) -> None:
    model = _model()
    groups = wdlab.param_groups(model, 1e-3, 0.1)
    opt = create("adamw", groups, lr=1e-3, weight_decay=0.1, decay_to=target)
    before = state_bytes(opt)
    _step(model, opt)
    assert before == _measured(opt)
    plain = _make("adamw", _model())
    assert (before > state_bytes(plain)) == (target != "one")


@pytest.mark.parametrize(
    "wrap",
    [
        lambda o: NaP(o, per="neuron"),
        RotationalWrapper,
        lambda o: NormGrowthLimiter(o, 1.05),
    ],
)
def test_wrappers_add_their_own_state(wrap: Any) -> None:
    model = _model()
    opt = wrap(_make("adamw", model))
    before = state_bytes(opt)
    _step(model, opt)
    assert before == _measured(opt) == state_bytes(opt)
    assert before > state_bytes(_make("adamw", _model()))


def test_unknown_optimizer_is_probed_on_a_copy() -> None:
    model = _model()
    opt = torch.optim.RMSprop(model.parameters(), momentum=0.9, centered=True)
    before = state_bytes(opt)
    assert not opt.state  # the original was not stepped
    _step(model, opt)
    assert before == _measured(opt)


def test_lion_and_scale_save_against_adamw() -> None:
    numel = sum(p.numel() for p in _model().parameters())
    head = 20 * 16  # the output weight: SCALE's only momentum buffer
    vectors = 16 + 16 + 20  # LayerNorm weight/bias, output bias: AdamW inside SCALE
    per_param = {n: state_bytes_per_param(_make(n, _model())) for n in ("adamw", "lion", "scale")}
    n_tensors = 6
    assert per_param["adamw"] == pytest.approx((8 * numel + 4 * n_tensors) / numel)
    assert per_param["lion"] == pytest.approx(4.0)
    assert per_param["scale"] == pytest.approx((4 * head + 8 * vectors + 4 * 3) / numel)
    assert per_param["scale"] < per_param["lion"] < per_param["adamw"]
