"""wdlab.optim._native (the one-pass C kernels) against wdlab's torch paths of the same
optimizers.

Every comparison runs the native path and a torch path ("whole", or for AdamP/SGDP the same
optimizer with native.supports patched to False) from identical weights and gradients, and
asserts weights and state agree to float rounding. The "split" runs force the step to be cut
into three thread ranges that start and end inside tensors and inside rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

from wdlab.optim import SCALE, SGDP, SGDW, AdamP, FAdam, Lion, NovoGrad
from wdlab.optim import _native as native
from wdlab.optim import functional as F

torch.set_num_threads(1)

SHAPES = [(7, 3), (13,), (5, 11)]
"""89 elements: a forced 3-way split ends ranges at 29 (inside (13,)) and 59 (row 2 of (5, 11))."""

TOL = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.float64: {"rtol": 1e-12, "atol": 1e-14},
}
DTYPES = [torch.float32, torch.float64]

Builder = Callable[[list[nn.Parameter], str], torch.optim.Optimizer]

needs_native = pytest.mark.skipif(
    not native.available(), reason=f"native kernels unavailable: {native.why_unavailable()}"
)


@pytest.fixture(params=[1, 3], ids=["one-range", "split3"])
def threads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """1: one range per step (tiny tensors); 3: MIN_PER_THREAD=5 and 3 threads, so every step
    is cut into three ranges on the kernel pool."""
    before = torch.get_num_threads()
    if request.param > 1:
        monkeypatch.setattr(native, "MIN_PER_THREAD", 5)
    torch.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        torch.set_num_threads(before)


# ---- helpers ---------------------------------------------------------------------------------


def _weights(
    shapes: list[tuple[int, ...]], dtype: torch.dtype, seed: int = 0
) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]


def _grads(
    shapes: list[tuple[int, ...]], dtype: torch.dtype, steps: int, seed: int = 1
) -> list[list[torch.Tensor]]:
    # Drawn in float64 and rounded, so float32 and float64 runs see the same gradients.
    gen = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
        for _ in range(steps)
    ]


def _run(
    build: Builder,
    mode: str,
    weights: list[torch.Tensor],
    grads: list[list[torch.Tensor]],
) -> tuple[list[nn.Parameter], torch.optim.Optimizer]:
    params = [nn.Parameter(w.clone()) for w in weights]
    opt = build(params, mode)
    for step in grads:
        for p, g in zip(params, step, strict=True):
            p.grad = g.clone()
        opt.step()
    return params, opt


def _assert_same_run(
    a: tuple[list[nn.Parameter], torch.optim.Optimizer],
    b: tuple[list[nn.Parameter], torch.optim.Optimizer],
    tol: dict[str, float],
) -> None:
    """Weights and every state tensor of run a equal those of run b within tol."""
    (pa, oa), (pb, ob) = a, b
    for x, y in zip(pa, pb, strict=True):
        torch.testing.assert_close(x.detach(), y.detach(), **tol)
        sa, sb = oa.state[x], ob.state[y]
        assert sa.keys() == sb.keys()
        for key, value in sa.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, sb[key], **tol, msg=lambda m, k=key: f"{k}: {m}")
            else:
                assert value == sb[key]


def _moved(params: list[nn.Parameter], weights: list[torch.Tensor]) -> float:
    return max(float((p.detach() - w).abs().max()) for p, w in zip(params, weights, strict=True))


# ---- the optimizers with a `mode`: native against "whole" ---------------------------------------

SGD_MOMENTA = {
    "mom0.9": {"momentum": 0.9},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "mom0.5-damp0.3": {"momentum": 0.5, "dampening": 0.3},
    "mom0": {"momentum": 0.0},
}


def _sgdw(decay: str, mom: dict[str, Any]) -> Builder:
    return lambda ps, mode: SGDW(ps, lr=0.1, weight_decay=0.2, decay=decay, mode=mode, **mom)


def _scale_groups(ps: list[nn.Parameter]) -> list[dict[str, Any]]:
    roles = ["matrix", "bias", "embedding", "output"]
    return [{"params": [p], "role": r} for p, r in zip(ps, roles, strict=True)]


SCALE_SHAPES = [(7, 3), (13,), (5, 11), (5, 2, 3)]
"""A (5, 2, 3) output layer is a (5, 6) matrix: its 30 elements split at 10 and 20, mid-row."""

CASES = [
    *(
        pytest.param(SHAPES, _sgdw(decay, mom), id=f"sgdw-{decay}-{name}")
        for decay in ("decoupled", "l2")
        for name, mom in SGD_MOMENTA.items()
    ),
    *(
        pytest.param(
            SHAPES,
            lambda ps, mode, d=decay: Lion(ps, lr=0.01, weight_decay=0.5, decay=d, mode=mode),
            id=f"lion-{decay}",
        )
        for decay in ("decoupled", "l2")
    ),
    *(
        pytest.param(SHAPES, lambda ps, mode, kw=kw: NovoGrad(ps, lr=0.05, mode=mode, **kw),
                     id=f"novograd-{name}")
        for name, kw in {
            "decoupled": {"weight_decay": 0.1},
            "l2": {"weight_decay": 0.1, "decay": "l2"},
            "in-momentum-averaging": {
                "weight_decay": 0.1, "decay_in_momentum": True, "grad_averaging": True
            },
        }.items()
    ),
    *(
        pytest.param(SHAPES, lambda ps, mode, kw=kw: FAdam(ps, lr=0.01, mode=mode, **kw),
                     id=f"fadam-{name}")
        for name, kw in {
            "wd": {"weight_decay": 0.1},
            "no-wd": {"weight_decay": 0.0},
            "l2": {"weight_decay": 0.1, "decay": "l2"},
            "p0.25-clip0.5": {"weight_decay": 0.1, "p": 0.25, "clip": 0.5},
        }.items()
    ),
    *(
        pytest.param(
            SCALE_SHAPES,
            lambda ps, mode, d=decay: SCALE(_scale_groups(ps), lr=0.01, weight_decay=0.1,
                                            decay=d, mode=mode),
            id=f"scale-{decay}",
        )
        for decay in ("decoupled", "l2")
    ),
]


@needs_native
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shapes", "build"), CASES)
def test_native_matches_whole(
    shapes: list[tuple[int, ...]], build: Builder, dtype: torch.dtype, threads: int,
    kernel_calls: list[str],
) -> None:
    weights, grads = _weights(shapes, dtype), _grads(shapes, dtype, steps=4)
    ours = _run(build, "native", weights, grads)
    assert kernel_calls, "mode='native' ran no C kernel"
    kernel_calls.clear()
    reference = _run(build, "whole", weights, grads)
    assert not kernel_calls, "mode='whole' must not use the C kernels"
    _assert_same_run(ours, reference, TOL[dtype])
    assert _moved(reference[0], weights) > 1e-3  # the comparison is not of two no-ops


@needs_native
def test_forced_split_cuts_inside_tensors_and_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The premise of the "split3" runs: ranges cover everything and end mid-tensor, mid-row."""
    monkeypatch.setattr(native, "MIN_PER_THREAD", 5)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        total = sum(math.prod(s) for s in SHAPES)
        threads = native.threads_for(total)
        assert threads == 3
        # kernels.c's thread_range: thread t takes [total*t/n, total*(t+1)/n).
        starts = [total * t // threads for t in range(1, threads)]
        tensor_starts = {0, 21, 34}  # where (7, 3), (13,), (5, 11) begin in the concatenation
        assert not set(starts) & tensor_starts
        assert any(34 < b < total and (b - 34) % 11 for b in starts)  # mid-row of (5, 11)
        # Fewer threads when there is too little work: 10 elements, >= 5 each.
        assert native.threads_for(10) == 2
        assert native.threads_for(4) == 1
    finally:
        torch.set_num_threads(before)


# ---- AdamP / SGDP: native automatically; reference = native.supports patched to False ----------

VIEW_SHAPES = [(7, 3), (13,), (5, 11), (6, 4), (4, 3, 2, 2)]
GRAD_KINDS = ["channel", "layer", "none", "random", "channel"]
"""Per param: gradient orthogonal to every row ("channel"), to the whole tensor only ("layer"),
or random ("none"/"random": the cosine test should fail for both views)."""


def _shaped_grad(w: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """A gradient for w: random, with its radial part removed per row or globally (float64)."""
    r = torch.randn(w.shape, generator=gen, dtype=torch.float64)
    w64 = w.detach().double()
    if kind in ("channel", "layer") and w.ndim > 1:
        rows = w.shape[0] if kind == "channel" else 1
        wv, rv = w64.reshape(rows, -1), r.reshape(rows, -1)
        rv = rv - wv * ((rv * wv).sum(1, keepdim=True) / (wv * wv).sum(1, keepdim=True))
        r = rv.reshape(w.shape)
    return r.to(w.dtype)


def _expected_view(w: torch.Tensor, g: torch.Tensor, delta: float, eps: float) -> tuple[Any, Any]:
    """The cosine test of REFERENCE.md §2 in float64, written out here: (view, norms)."""
    for name, rows in (("channel", w.shape[0]), ("layer", 1)):
        wv, gv = w.double().reshape(rows, -1), g.double().reshape(rows, -1)
        w_norms = wv.norm(dim=1)
        cos = (gv * wv).sum(1).abs() / (gv.norm(dim=1).clamp(min=eps) * w_norms.clamp(min=eps))
        if float(cos.max()) < delta / math.sqrt(wv.shape[1]):
            return name, w_norms
    return None, None


def _run_projected(
    opt_cls: type, kw: dict[str, Any], dtype: torch.dtype, steps: int = 3
) -> tuple[list[nn.Parameter], torch.optim.Optimizer]:
    weights = _weights(VIEW_SHAPES, dtype, seed=5)
    params = [nn.Parameter(w.clone()) for w in weights]
    opt = opt_cls(params, **kw)
    gen = torch.Generator().manual_seed(6)
    for _ in range(steps):
        for p, kind in zip(params, GRAD_KINDS, strict=True):
            p.grad = _shaped_grad(p, kind, gen)
        opt.step()
    return params, opt


PROJECTED = [
    pytest.param(AdamP, {"lr": 0.01, "weight_decay": 0.1}, id="adamp"),
    pytest.param(AdamP, {"lr": 0.01, "weight_decay": 0.1, "decay": "l2"}, id="adamp-l2"),
    pytest.param(AdamP, {"lr": 0.01, "weight_decay": 0.1, "nesterov": True}, id="adamp-nesterov"),
    pytest.param(SGDP, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}, id="sgdp"),
    pytest.param(SGDP, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
                 id="sgdp-nesterov"),
    pytest.param(SGDP, {"lr": 0.1, "momentum": 0.0, "dampening": 0.3, "weight_decay": 0.1},
                 id="sgdp-mom0-damp"),
    pytest.param(SGDP, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1, "decay": "l2"},
                 id="sgdp-l2"),
]


@needs_native
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("opt_cls", "kw"), PROJECTED)
def test_adamp_sgdp_native_matches_torch_path(
    opt_cls: type, kw: dict[str, Any], dtype: torch.dtype, threads: int,
    kernel_calls: list[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours = _run_projected(opt_cls, kw, dtype)
    # the matrices' test and (unprojected) update in one kernel, or the test alone (Nesterov)
    assert {"invariant_view", "adamp", "sgdp"} & set(kernel_calls)
    if opt_cls is SGDP:
        assert "sgdp" in kernel_calls  # the unprojected matrices' test and one-pass update
    kernel_calls.clear()
    with monkeypatch.context() as m:
        m.setattr(native, "supports", lambda *lists: False)
        reference = _run_projected(opt_cls, kw, dtype)
    assert not kernel_calls
    _assert_same_run(ours, reference, TOL[dtype])


@needs_native
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("shape", "kind", "want"),
    [
        ((7, 5), "channel", "channel"),
        ((4, 3, 2, 2), "channel", "channel"),
        ((7, 5), "layer", "layer"),
        ((4, 3, 2, 2), "layer", "layer"),
        ((7, 5), "random", None),
        ((4, 3, 2, 2), "random", None),
    ],
)
def test_scale_invariant_view_native_matches_torch_and_formula(
    shape: tuple[int, ...], kind: str, want: str | None, dtype: torch.dtype, threads: int,
    kernel_calls: list[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    delta, eps = 0.1, 1e-8
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    g = _shaped_grad(w, kind, gen)
    expected_view, expected_norms = _expected_view(w, g, delta, eps)
    assert expected_view == want  # the construction does what the case says

    view, norms = F.scale_invariant_view(w, g, delta, eps)
    assert kernel_calls == ["invariant_view"]
    with monkeypatch.context() as m:
        m.setattr(native, "supports", lambda *lists: False)
        torch_view, torch_norms = F.scale_invariant_view(w, g, delta, eps)
    assert view == torch_view == want
    if want is None:
        assert norms is None and torch_norms is None
        return
    assert norms is not None and torch_norms is not None
    assert norms.dtype == torch_norms.dtype == dtype
    torch.testing.assert_close(norms, torch_norms, **TOL[dtype])
    torch.testing.assert_close(norms.double(), expected_norms, **TOL[dtype])


# ---- fallbacks -----------------------------------------------------------------------------

FALLBACK_BUILDERS = {
    "sgdw": lambda ps, mode: SGDW(ps, lr=0.1, weight_decay=0.2, mode=mode),
    "lion": lambda ps, mode: Lion(ps, lr=0.01, weight_decay=0.5, mode=mode),
    "novograd": lambda ps, mode: NovoGrad(ps, lr=0.05, weight_decay=0.1, mode=mode),
    "fadam": lambda ps, mode: FAdam(ps, lr=0.01, weight_decay=0.1, mode=mode),
    "scale": lambda ps, mode: SCALE([{"params": ps, "role": "output"}], lr=0.01,
                                    weight_decay=0.1, mode=mode),
}


def _odd_params(layout: str) -> list[torch.Tensor]:
    """Weights the kernels must refuse: a transposed (non-contiguous) one, bfloat16 ones, or
    one list mixing float32 and float64 (only SGDW and Lion hand whole lists to a kernel;
    the others run per tensor, where each dtype alone is fine)."""
    gen = torch.Generator().manual_seed(8)
    a = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    b = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    if layout == "transposed":
        return [a.t()]  # (7, 3) with strides (1, 7)
    if layout == "bfloat16":
        return [a.t().contiguous().bfloat16(), b.bfloat16()]
    return [a.t().contiguous().float(), b]  # mixed dtypes


def _run_layout(
    build: Builder, mode: str, weights: list[torch.Tensor], grad_like_param: bool = True
) -> list[torch.Tensor]:
    """Three steps; gradients laid out like their param (what autograd's layout contract
    gives) unless grad_like_param=False (contiguous gradients, as a hand-set p.grad)."""
    params = [nn.Parameter(w.clone(memory_format=torch.preserve_format)) for w in weights]
    opt = build(params, mode)
    gen = torch.Generator().manual_seed(9)
    for _ in range(3):
        for p in params:
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            p.grad = torch.empty_like(p).copy_(g) if grad_like_param else g
        opt.step()
    return [p.detach() for p in params]


FALLBACKS = [
    *((name, layout) for name in sorted(FALLBACK_BUILDERS)
      for layout in ("transposed", "bfloat16")),
    ("sgdw", "mixed-dtypes"),
    ("lion", "mixed-dtypes"),
]


@needs_native
@pytest.mark.parametrize(("name", "layout"), FALLBACKS)
def test_auto_falls_back_where_the_kernels_cannot_run(
    name: str, layout: str, kernel_calls: list[str]
) -> None:
    build = FALLBACK_BUILDERS[name]
    weights = _odd_params(layout)
    if layout == "transposed":
        assert not weights[0].is_contiguous()
    got = _run_layout(build, "auto", weights)
    assert not kernel_calls, f"mode='auto' used {kernel_calls} on {layout} params"
    chunked = _run_layout(build, "chunked", weights)
    whole = _run_layout(build, "whole", weights)
    for x, y, z in zip(got, chunked, whole, strict=True):
        assert torch.equal(x, y)  # auto resolved to "chunked"
        torch.testing.assert_close(x, z)  # and "chunked" is "whole" to rounding
    with pytest.raises(ValueError, match=r"impl='native'.*contiguous CPU float32/float64.*"
                       r"impl='auto'"):
        _run_layout(build, "native", weights)


@pytest.mark.parametrize("name", ["sgdw", "novograd"])
def test_torch_paths_take_a_grad_laid_out_unlike_its_param(name: str) -> None:
    """A hand-set contiguous p.grad on a transposed param (auto falls back to torch there)."""
    build = FALLBACK_BUILDERS[name]
    weights = _odd_params("transposed")
    got = _run_layout(build, "auto", weights, grad_like_param=False)
    # "whole" SGDW is the per-op path; NovoGrad's torch paths all share the fused kernel, so
    # its reference is the same run on a contiguous copy with the same values.
    reference = _run_layout(build, "whole" if name == "sgdw" else "auto",
                            [w.contiguous() for w in weights], grad_like_param=False)
    torch.testing.assert_close(got[0], reference[0], rtol=1e-12, atol=1e-14)


def test_unavailable_kernels_fall_back_and_native_names_why(
    monkeypatch: pytest.MonkeyPatch, kernel_calls: list[str]
) -> None:
    reason = "disabled by WDLAB_NATIVE=0"
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_failure", reason)

    def no_rebuild() -> None:
        raise AssertionError("library() retried the build after a recorded failure")

    monkeypatch.setattr(native, "_load", no_rebuild)
    assert not native.available()
    assert native.why_unavailable() == reason
    x = torch.zeros(3)
    assert not native.supports([x], [x])

    shapes = [(7, 3), (13,)]
    weights, grads = _weights(shapes, torch.float32), _grads(shapes, torch.float32, steps=2)
    for name, build in FALLBACK_BUILDERS.items():
        got = _run(build, "auto", weights, grads)
        whole = _run(build, "whole", weights, grads)
        for p, q in zip(got[0], whole[0], strict=True):
            torch.testing.assert_close(p.detach(), q.detach(), msg=lambda m, n=name: f"{n}: {m}")
        with pytest.raises(ValueError, match=rf"impl='native' cannot run: {reason}.*impl='auto'"):
            _run(build, "native", weights, grads)
    for opt_cls, kw in (
        (AdamP, {"lr": 0.01, "weight_decay": 0.1}),
        (SGDP, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}),
    ):
        _run_projected(opt_cls, kw, torch.float32, steps=1)
    assert not kernel_calls


def test_wdlab_native_0_disables_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_failure", None)
    monkeypatch.setenv("WDLAB_NATIVE", "0")
    assert native._load() is None
    assert native._failure == "disabled by WDLAB_NATIVE=0"


@needs_native
def test_supports_only_dense_contiguous_cpu_float32_or_float64_of_one_dtype() -> None:
    f32, f64 = torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.float64)
    assert native.supports([f32, f32], [None, f32])
    assert native.supports([f64])
    assert not native.supports([f32], [f64])
    assert not native.supports([f32.t()])
    assert not native.supports([f32.bfloat16()])
    assert not native.supports([None], [])  # no tensor at all: nothing to run on


# ---- NaN, autograd, scalars --------------------------------------------------------------------


@needs_native
def test_lion_nan_gradient_native_equals_whole() -> None:
    shapes = [(7, 3)]
    weights, grads = _weights(shapes, torch.float32), _grads(shapes, torch.float32, steps=3)
    grads[1][0][2, 1] = float("nan")
    build = FALLBACK_BUILDERS["lion"]
    ours = _run(build, "native", weights, grads)
    whole = _run(build, "whole", weights, grads)
    torch.testing.assert_close(ours[0][0].detach(), whole[0][0].detach(), equal_nan=True)


@needs_native
@pytest.mark.parametrize("name", sorted(FALLBACK_BUILDERS))
def test_native_step_bumps_the_autograd_version_counter(name: str) -> None:
    """Kernels write through raw pointers; without native.touched a graph that saved the old
    weight would backpropagate through the new one silently."""
    w = nn.Parameter(torch.randn(7, 3, generator=torch.Generator().manual_seed(10)))
    opt = FALLBACK_BUILDERS[name]([w], "native")
    loss = (w * w).sum()  # saves w for backward
    w.grad = torch.ones_like(w)
    before = w._version
    opt.step()
    assert w._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


INT_HYPERPARAMETERS = [
    pytest.param(lambda ps, mode: SGDW(ps, lr=1, momentum=0, mode=mode), id="sgdw-lr1-mom0"),
    pytest.param(lambda ps, mode: SGDW(ps, lr=0.1, momentum=0.9, dampening=0, mode=mode),
                 id="sgdw-damp0"),
    pytest.param(lambda ps, mode: Lion(ps, lr=1, mode=mode), id="lion-lr1"),
    pytest.param(lambda ps, mode: Lion(ps, lr=0.1, betas=(0, 0.99), mode=mode), id="lion-beta0"),
    pytest.param(lambda ps, mode: NovoGrad(ps, lr=1, mode=mode), id="novograd-lr1"),
]


@needs_native
@pytest.mark.parametrize("build", INT_HYPERPARAMETERS)
def test_integer_hyperparameters_match_whole(build: Builder) -> None:
    """Ints are valid hyperparameters (and torch's own state_dicts carry dampening=0)."""
    shapes = [(7, 3)]
    weights, grads = _weights(shapes, torch.float64), _grads(shapes, torch.float64, steps=2)
    ours = _run(build, "native", weights, grads)
    whole = _run(build, "whole", weights, grads)
    _assert_same_run(ours, whole, TOL[torch.float64])


@needs_native
def test_state_of_another_shape_is_refused_before_any_write() -> None:
    """A state_dict saved for another model must not send a kernel out of bounds."""
    w = nn.Parameter(torch.randn(6, 4))
    opt = SGDW([w], lr=0.1, momentum=0.9, mode="native")
    w.grad = torch.ones_like(w)
    opt.step()
    opt.state[w]["momentum_buffer"] = torch.zeros(3)  # as a mismatched checkpoint would leave
    before = w.detach().clone()
    with pytest.raises(ValueError, match=r"state of shape \(3,\) does not match its parameter"):
        opt.step()
    assert torch.equal(w.detach(), before)
