"""CautiousUpdate (C-optimizers): against pytorch-optimizer's cautious Lion, against the
formula with the inner optimizer's own update, and its invariant on every optimizer."""

from __future__ import annotations

import pytest
import torch

import wdlab
from wdlab import optim
from wdlab.optim.wrappers import CautiousUpdate

torch.set_num_threads(1)

LRS = {"sgdw": 0.1, "sgdp": 0.1, "novograd": 0.05, "scale": 0.05, "lion": 1e-3, "muon": 0.02}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))


def _grads(params: list[torch.Tensor], step: int) -> None:
    gen = torch.Generator().manual_seed(7 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_matches_pytorch_optimizer_cautious_lion(impl: str) -> None:
    peer = pytest.importorskip("pytorch_optimizer")
    torch.manual_seed(0)
    w0 = torch.randn(9, 4)
    ours_p, theirs_p = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    ours = CautiousUpdate(optim.Lion([ours_p], lr=1e-2, weight_decay=0.5, impl=impl))
    theirs = peer.Lion([theirs_p], lr=1e-2, weight_decay=0.5, cautious=True, foreach=False)
    for step in range(8):
        _grads([ours_p], step)
        _grads([theirs_p], step)
        ours.step()
        theirs.step()
    torch.testing.assert_close(ours_p.detach(), theirs_p.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours_p.detach(), w0)


def test_adamw_masked_update_follows_the_formula() -> None:
    """Adam's moments see only the gradients, so an unwrapped AdamW with wd 0 on a copy gives
    the update u; the formula is applied to it here."""
    torch.manual_seed(0)
    w = torch.randn(6, 7)
    p = torch.nn.Parameter(w.clone())
    shadow = torch.nn.Parameter(w.clone())
    lr, wd = 1e-2, 0.3
    wrapped = CautiousUpdate(optim.AdamW([p], lr=lr, weight_decay=wd))
    plain = optim.AdamW([shadow], lr=lr, weight_decay=0.0)
    expected = w.clone()
    for step in range(6):
        _grads([p], step)
        _grads([shadow], step)
        before = shadow.detach().clone()
        plain.step()
        delta = shadow.detach() - before
        mask = (delta * p.grad < 0).float()
        expected = expected * (1 - lr * wd) + delta * mask * (mask.numel() / (mask.sum() + 1))
        wrapped.step()
    torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", optim.available())
def test_no_coordinate_moves_against_the_gradient(name: str) -> None:
    """After the (unmasked) decay is taken out, every coordinate's change has the sign of -g."""
    model = _model()
    opt = CautiousUpdate(wdlab.create_optimizer(model, name, lr=LRS.get(name, 1e-2),
                                                weight_decay=0.2, probe=False))
    decaying = {id(p): g for g in opt.param_groups for p in g["params"]}
    params = list(model.parameters())
    moved = 0
    for step in range(4):
        _grads(params, step)
        before = [p.detach().clone() for p in params]
        opt.step()
        for p, w in zip(params, before, strict=True):
            g = decaying[id(p)]
            rate = g["lr"] * g["weight_decay"]
            change = p.detach() - w * (1 - rate)
            assert (change * p.grad <= 1e-12).all(), (name, step)
            moved += int((change != 0).sum())
    assert moved > 0
