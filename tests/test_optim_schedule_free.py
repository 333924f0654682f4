"""Schedule-Free AdamW/SGD: side by side with the `schedulefree` package (its production and
*Reference classes) over many steps with warm-up, weight decay and train/eval swaps; the
decay modes against formulas; state_dicts across; the generic path without host syncs."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

from wdlab.optim import ScheduleFreeAdamW, ScheduleFreeSGD
from wdlab.optim import _native as native
from wdlab.optim.opcount import count_step
from wdlab.optim.schedule_free import swap_to

schedulefree = pytest.importorskip("schedulefree")

SHAPES = [(33, 7), (5, 3, 2), (11,)]
STEPS = 60
IMPLS = ["reference", "foreach"] + (["native"] if native.available() else [])
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def _params(dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in SHAPES]


def _train(
    opt: Any,
    params: list[torch.nn.Parameter],
    steps: int = STEPS,
    grad_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    lr_at: Callable[[int], float] | None = None,
) -> None:
    """Fixed random gradients; an eval/train round trip every 13 steps, as the engine does."""
    gen = torch.Generator().manual_seed(1)
    opt.train()
    for step in range(steps):
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
        for p in params:
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.grad = grad_fn(g, p.detach()) if grad_fn else g
        opt.step()
        if step % 13 == 4:
            opt.eval()
            opt.train()
    opt.eval()


def _close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), **TOL[a.dtype])


ADAM_KW = dict(lr=0.02, betas=(0.9, 0.99), weight_decay=0.05, warmup_steps=10, r=0.5)
SGD_KW = dict(lr=0.3, momentum=0.8, weight_decay=0.01, warmup_steps=10, r=0.5)
PEERS = {
    "adamw": (ScheduleFreeAdamW, ADAM_KW, ["AdamWScheduleFree", "AdamWScheduleFreeReference"]),
    "sgd": (ScheduleFreeSGD, SGD_KW, ["SGDScheduleFree", "SGDScheduleFreeReference"]),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", list(PEERS))
def test_matches_the_schedulefree_package(family: str, impl: str, dtype: torch.dtype,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cls, kw, peers = PEERS[family]
    ours = _params(dtype)
    _train(cls(ours, impl=impl, **kw), ours)
    for peer in peers:
        if not hasattr(schedulefree, peer):
            continue
        theirs = _params(dtype)
        peer_kw = dict(kw, foreach=False) if "Reference" not in peer else dict(kw)
        _train(getattr(schedulefree, peer)(theirs, **peer_kw), theirs)
        _close(ours, theirs)
    capsys.readouterr()  # the Reference classes print on every swap


def test_reference_impl_is_the_package_bit_for_bit() -> None:
    ours, theirs = _params(), _params()
    _train(ScheduleFreeAdamW(ours, impl="reference", **ADAM_KW), ours)
    _train(schedulefree.AdamWScheduleFree(theirs, foreach=False, **ADAM_KW), theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_independent_decay_is_decoupled_with_wd_over_the_initial_lr() -> None:
    """independent: rate = (lr_t/lr_0)*wd, i.e. decoupled with wd/lr_0, under any lr path."""
    lr0 = 0.02

    def lr_at(step: int) -> float:
        return lr0 * (1 - step / (2 * STEPS))

    a, b = _params(), _params()
    _train(ScheduleFreeAdamW(a, lr=lr0, weight_decay=0.4, decay="independent"), a,
           lr_at=lr_at)
    _train(ScheduleFreeAdamW(b, lr=lr0, weight_decay=0.4 / lr0), b, lr_at=lr_at)
    _close(a, b)


def test_l2_decay_is_the_package_with_the_penalty_in_the_gradient() -> None:
    a, b = _params(), _params()
    _train(ScheduleFreeAdamW(a, lr=0.02, weight_decay=0.3, decay="l2"), a)
    _train(schedulefree.AdamWScheduleFree(b, lr=0.02, weight_decay=0.0, foreach=False), b,
           grad_fn=lambda g, y: g + 0.3 * y)
    _close(a, b)
    # For SGD the penalty and the decoupled decay are one update.
    c, d = _params(), _params()
    _train(ScheduleFreeSGD(c, lr=0.3, weight_decay=0.01, decay="l2"), c)
    _train(ScheduleFreeSGD(d, lr=0.3, weight_decay=0.01), d)
    _close(c, d)


def test_state_dict_moves_to_the_package_and_back() -> None:
    ours = _params()
    opt = ScheduleFreeAdamW(ours, **ADAM_KW)
    _train(opt, ours, steps=20)  # ends in eval mode, as checkpoints are taken
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    peer = schedulefree.AdamWScheduleFree(theirs, foreach=False, **ADAM_KW)
    peer.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch would share the tensors
    for group in peer.param_groups:  # the package's own switch, not part of our groups
        group.setdefault("foreach", False)
    _train(opt, ours, steps=20)
    _train(peer, theirs, steps=20)
    _close(ours, theirs)
    back = ScheduleFreeAdamW([torch.nn.Parameter(p.detach().clone()) for p in theirs])
    back.load_state_dict(peer.state_dict())
    assert back.param_groups[0]["k"] == 40 and not back.training


def test_swap_modes_and_errors() -> None:
    params = _params()
    opt = ScheduleFreeSGD(params, lr=0.1, momentum=0.9)
    assert opt.training  # starts in train mode, unlike the package
    _train(opt, params, steps=5)
    x = [p.detach().clone() for p in params]
    opt.eval()  # idempotent
    assert all(torch.equal(p, q) for p, q in zip(params, x, strict=True))
    z = [opt.state[p]["z"] for p in params]
    opt.train()
    for p, xi, zi in zip(params, x, z, strict=True):  # y = (1 - β) z + β x
        torch.testing.assert_close(p.detach(), 0.1 * zi + 0.9 * xi)
    opt.eval()
    with pytest.raises(RuntimeError, match=r"in eval mode .* call optimizer\.train\(\)"):
        opt.step()
    assert swap_to(opt, "train") and opt.training
    assert not swap_to(torch.optim.SGD(params, lr=0.1), "eval")
    with pytest.raises(ValueError, match="momentum must be a number in"):
        ScheduleFreeSGD(params, momentum=0.0)
    with pytest.raises(ValueError, match="warmup_steps must be an integer"):
        ScheduleFreeAdamW(params, warmup_steps=1.5)
    with pytest.raises(ValueError, match="impl must be one of auto, reference, native"):
        ScheduleFreeAdamW(params, impl="fused")


@pytest.mark.parametrize("cautious", [False, True])
@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_generic_path_has_no_host_sync(cls: type, cautious: bool) -> None:
    """The meta device stands in for a GPU: impl="auto" takes the foreach path there, and any
    read of a device value on the host would fail or be counted; so too under CautiousUpdate
    (its mask and rescale stay tensors, in multi-tensor ops; decay_to does not apply: "zero"
    only here)."""
    from wdlab.optim.wrappers import CautiousUpdate

    params = [torch.nn.Parameter(torch.empty(s, device="meta")) for s in SHAPES * 5]
    for p in params:
        p.grad = torch.empty(p.shape, device="meta")
    opt = cls(params, weight_decay=0.1)
    if cautious:
        opt = CautiousUpdate(opt)
    opt.step()
    count = count_step(opt)
    assert count.syncs == []
    if cautious:  # the mask was taken, not per tensor
        assert count.ops["aten._foreach_clamp_max_.Scalar"] >= 1
        assert count.ops["aten.lt.Scalar"] == 0
    gpu_like = torch.optim.AdamW(params, foreach=True)
    gpu_like.step()
    assert count.total <= count_step(gpu_like).total  # no more launches than torch's AdamW
