"""wdlab.factory.create_optimizer: grouping plus the optimizer registry."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import wdlab
import wdlab.optim
from wdlab.factory import create_optimizer
from wdlab.groups import classify, param_groups

torch.set_num_threads(1)


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Embedding(20, 8),
        nn.Linear(8, 16, bias=False),
        nn.LayerNorm(16),
        nn.ReLU(),
        nn.Linear(16, 5),
    )


@pytest.fixture
def torch_sgd(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register torch's SGD under a test name, so the plumbing is tested without wdlab's own."""
    entry = wdlab.optim.Entry("torch_sgd", "torch.optim", "SGD", "momentum", None)
    monkeypatch.setitem(wdlab.optim.REGISTRY, "torch_sgd", entry)
    return "torch_sgd"


def test_public_names() -> None:
    assert wdlab.create_optimizer is create_optimizer
    assert wdlab.classify is classify and wdlab.param_groups is param_groups


def test_groups_and_hparams_reach_the_optimizer(torch_sgd: str) -> None:
    m = model()
    opt = create_optimizer(m, torch_sgd, lr=0.1, weight_decay=0.01, momentum=0.9)
    assert isinstance(opt, torch.optim.SGD)
    expected = param_groups(m, 0.1, 0.01)
    assert len(opt.param_groups) == len(expected)
    for got, want in zip(opt.param_groups, expected, strict=True):
        assert got["param_names"] == want["param_names"]
        assert all(a is b for a, b in zip(got["params"], want["params"], strict=True))
        for key in ("lr", "weight_decay", "role", "scale_invariant"):
            assert got[key] == want[key]
        assert got["momentum"] == 0.9
    roles = {n: g["role"] for g in opt.param_groups for n in g["param_names"]}
    assert roles == {
        "0.weight": "embedding",
        "1.weight": "matrix",
        "2.weight": "vector",
        "2.bias": "bias",
        "4.weight": "output",
        "4.bias": "bias",
    }
    wd = {n: g["weight_decay"] for g in opt.param_groups for n in g["param_names"]}
    assert wd["1.weight"] == 0.01 and wd["2.weight"] == 0.0 and wd["4.bias"] == 0.0
    invariant = [n for g in opt.param_groups if g["scale_invariant"] for n in g["param_names"]]
    # Linear without bias feeding a LayerNorm, and the embedding feeding that Linear
    assert invariant == ["0.weight", "1.weight"]


def test_grouping_options_pass_through(torch_sgd: str) -> None:
    opt = create_optimizer(
        model(),
        torch_sgd,
        lr=0.1,
        weight_decay=0.01,
        decay_embedding=False,
        decay_output=False,
        overrides={"1.*": {"lr": 0.5}},
        probe=False,
    )
    by = {n: g for g in opt.param_groups for n in g["param_names"]}
    assert by["0.weight"]["weight_decay"] == 0.0 and by["4.weight"]["weight_decay"] == 0.0
    assert by["1.weight"]["lr"] == 0.5 and by["1.weight"]["weight_decay"] == 0.01
    assert not any(g["scale_invariant"] for g in opt.param_groups)


def test_unknown_name_fails_before_probing() -> None:
    class Unprobeable(nn.Module):  # no inferable input: probing would raise a different error
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(x)

    with pytest.raises(ValueError, match=r"unknown optimizer 'nope'; known: .*adamw"):
        create_optimizer(Unprobeable(), "nope", lr=0.1)


def _adamw_available() -> bool:
    try:
        wdlab.optim.get("adamw")
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _adamw_available(), reason="wdlab.optim.adamw not written yet")
def test_adamw_matches_torch_on_the_same_groups() -> None:
    ours_model = model()
    ref_model = copy.deepcopy(ours_model)
    ours = create_optimizer(ours_model, "adamw", lr=0.01, weight_decay=0.1)
    ref = torch.optim.AdamW(param_groups(ref_model, 0.01, 0.1), lr=0.01, weight_decay=0.1)
    x = torch.randint(0, 20, (4, 6))
    for m, opt in ((ours_model, ours), (ref_model, ref)):
        for _ in range(3):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
