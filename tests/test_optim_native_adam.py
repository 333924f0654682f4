"""kernels.c's Adam (wdlab's AdamW and AdamP on CPU) against torch's fused Adam kernels, bit for
bit, and AdamP/SGDP's combined test-and-update kernels against their torch paths.

The Adam kernel promises torch._fused_adamw_/_fused_adam_'s bits (native.run_adam checks it
once per process and otherwise keeps torch's kernel); these tests compare whole optimizer runs
on sizes whose last elements fall into torch's scalar loop (size % 8 or 16 != 0), tensors cut
between threads, both lerp branches of the first moment and both decay modes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from wdlab.optim import SGDP, AdamP, AdamW
from wdlab.optim import _native as native

VERIFIED = torch.backends.cpu.get_cpu_capability() == "AVX2"
"""Where the kernel's bits were checked when it was written: there it must run (elsewhere it
may fall back to torch's kernel, and the comparisons still must hold)."""

SIZES = [(7, 3), (13,), (1,), (40, 30), (3, 5, 7), (70001,)]
"""The tails of torch's vector loop (numel % 8: 5, 5, 1, 0, 1, 1), one matrix without one, and
a tensor big enough to be cut between threads."""

needs_native = pytest.mark.skipif(
    not native.available(), reason=f"native kernels unavailable: {native.why_unavailable()}"
)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    before = torch.get_num_threads()
    monkeypatch.setattr(native, "MIN_PER_THREAD", 7)  # cut even small tensors between threads
    torch.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        torch.set_num_threads(before)


def _params(shapes: list[tuple[int, ...]], dtype: torch.dtype, seed: int) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]


def _train(opt: torch.optim.Optimizer, params: list[nn.Parameter], steps: int = 4) -> None:
    gen = torch.Generator().manual_seed(99)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("beta1", [0.9, 0.3], ids=["lerp-small", "lerp-large"])
@pytest.mark.parametrize("decay", ["decoupled", "l2"])
def test_adamw_equals_torch_fused_bit_for_bit(
    decay: str, beta1: float, dtype: torch.dtype, threads: int, kernel_calls: list[str]
) -> None:
    ours, theirs = _params(SIZES, dtype, 1), _params(SIZES, dtype, 1)
    hyper = dict(lr=0.01, betas=(beta1, 0.99), eps=1e-8, weight_decay=0.1)
    opt = AdamW(ours, decay=decay, **hyper)
    peer = (torch.optim.AdamW if decay == "decoupled" else torch.optim.Adam)(
        theirs, fused=True, **hyper)
    _train(opt, ours)
    _train(peer, theirs)
    assert kernel_calls.count("adam") >= 4 or not VERIFIED  # one call per step (+ the check)
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], peer.state[q][key]), key
    assert not torch.equal(ours[3], _params(SIZES, dtype, 1)[3])  # the runs did move


@needs_native
def test_adamw_keeps_torch_kernel_where_it_cannot_promise_its_bits(
    monkeypatch: pytest.MonkeyPatch, kernel_calls: list[str]
) -> None:
    """A failed bit check (as on a CPU whose torch kernel fuses other multiply-adds) or an
    unknown torch CPU capability: the step runs torch's own fused kernel, same bits."""
    for patch in ({"_adam_matches_torch": lambda *a: False}, {"_VECTOR_BYTES": {}}):
        with monkeypatch.context() as m:
            for name, value in patch.items():
                m.setattr(native, name, value)
            ours, theirs = (_params(SIZES[:3], torch.float32, 2) for _ in range(2))
            _train(AdamW(ours, lr=0.01), ours, steps=2)
            _train(torch.optim.AdamW(theirs, lr=0.01, fused=True), theirs, steps=2)
            assert "adam" not in kernel_calls
            assert all(torch.equal(p, q) for p, q in zip(ours, theirs, strict=True))


MATRICES = [(16, 24), (9, 5), (3, 4, 2, 2), (33,), (7, 13)]


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("decay", ["decoupled", "l2"])
def test_adamp_unprojected_matrices_equal_its_torch_path_bit_for_bit(
    decay: str, dtype: torch.dtype, threads: int, kernel_calls: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Random gradients fail the scale-invariance test, so every matrix takes the plain Adam
    step: the combined kernel (test, then update) equals the test in torch ops followed by
    torch's fused AdamW, bit for bit."""
    ours = _params(MATRICES, dtype, 3)
    opt = AdamP(ours, lr=0.01, weight_decay=0.1, decay=decay)
    _train(opt, ours)
    assert "adamp" in kernel_calls or not VERIFIED
    kernel_calls.clear()
    theirs = _params(MATRICES, dtype, 3)
    with monkeypatch.context() as m:
        m.setattr(native, "supports", lambda *lists: False)
        peer = AdamP(theirs, lr=0.01, weight_decay=0.1, decay=decay)
        _train(peer, theirs)
    assert not kernel_calls
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["step"], peer.state[q]["step"])


@needs_native
@pytest.mark.parametrize("opt_cls", [AdamP, SGDP])
def test_adamp_sgdp_native_keep_nan_like_torch_path(
    opt_cls: type, monkeypatch: pytest.MonkeyPatch, kernel_calls: list[str]
) -> None:
    """A NaN in a matrix's gradient fails the test (NaN compares false): that matrix takes
    the plain step, its NaN spreading exactly as on the torch path."""
    kw: dict[str, Any] = {"lr": 0.01, "weight_decay": 0.1}
    if opt_cls is SGDP:
        kw["momentum"] = 0.9

    def run() -> list[nn.Parameter]:
        params = _params(MATRICES, torch.float32, 4)
        opt = opt_cls(params, **kw)
        gen = torch.Generator().manual_seed(5)
        for t in range(2):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            if t == 1:
                params[0].grad[2, 3] = float("nan")
            opt.step()
        return params

    ours = run()
    assert {"adamp", "sgdp"} & set(kernel_calls)
    with monkeypatch.context() as m:
        m.setattr(native, "supports", lambda *lists: False)
        theirs = run()
    assert ours[0].isnan().any()
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, equal_nan=True)
