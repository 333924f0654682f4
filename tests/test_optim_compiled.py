"""impl="compiled": every optimizer that offers it computes the reference update, and the
ones that do not say so in one line naming their impls.

torch.compile's inductor backend spends seconds per graph generating and compiling C++, so
the per-family comparisons trace with the "aot_eager" backend (the same captured graph, run
by torch's eager kernels: it checks the compiled functions' math and that they trace) and one
test runs AdamW through inductor end to end.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import pytest
import torch

from wdlab.optim import (
    SCALE,
    SGDP,
    SGDW,
    AdamP,
    AdamW,
    FAdam,
    Lion,
    Muon,
    NovoGrad,
    ScheduleFreeAdamW,
    ScheduleFreeSGD,
)
from wdlab.optim.functional import _common, scale_invariant_view

SHAPES = [(6, 5), (4, 3, 2), (7,)]
STEPS = 3

Builder = Callable[[list[torch.nn.Parameter], str], torch.optim.Optimizer]
BUILDERS: dict[str, Builder] = {
    "adamw": lambda ps, impl: AdamW(ps, lr=0.01, weight_decay=0.1, impl=impl),
    "adamw-l2": lambda ps, impl: AdamW(ps, lr=0.01, weight_decay=0.1, decay="l2", impl=impl),
    "sgdw": lambda ps, impl: SGDW(ps, lr=0.05, momentum=0.9, weight_decay=0.1, impl=impl),
    "lion": lambda ps, impl: Lion(ps, lr=1e-3, weight_decay=0.5, impl=impl),
    "novograd": lambda ps, impl: NovoGrad(ps, lr=0.01, weight_decay=0.1, grad_averaging=True,
                                          impl=impl),
    "novograd-in-momentum-l2": lambda ps, impl: NovoGrad(
        [{"params": ps[:2], "decay_in_momentum": True}, {"params": ps[2:], "decay": "l2"}],
        lr=0.01, weight_decay=0.1, impl=impl),
    "fadam": lambda ps, impl: FAdam(ps, lr=0.01, weight_decay=0.1, impl=impl),
    "fadam-p0.25-l2": lambda ps, impl: FAdam(ps, lr=0.01, weight_decay=0.1, p=0.25, clip=0.5,
                                             decay="l2", impl=impl),
    "adamp": lambda ps, impl: AdamP(ps, lr=0.01, weight_decay=0.1, impl=impl),
    "adamp-nesterov-l2": lambda ps, impl: AdamP(ps, lr=0.01, weight_decay=0.1, decay="l2",
                                                nesterov=True, impl=impl),
    "sgdp": lambda ps, impl: SGDP(ps, lr=0.05, momentum=0.9, weight_decay=0.1, impl=impl),
    "sgdp-nesterov-l2": lambda ps, impl: SGDP(ps, lr=0.05, momentum=0.9, nesterov=True,
                                              weight_decay=0.1, decay="l2", impl=impl),
    "sgdp-no-momentum": lambda ps, impl: SGDP(ps, lr=0.05, momentum=0.0, dampening=0.1,
                                              weight_decay=0.1, impl=impl),
    "schedule-free-adamw": lambda ps, impl: ScheduleFreeAdamW(ps, lr=0.01, weight_decay=0.1,
                                                              warmup_steps=2, impl=impl),
    "schedule-free-sgd": lambda ps, impl: ScheduleFreeSGD(ps, lr=0.05, weight_decay=0.1,
                                                          impl=impl),
}
COMPILED_KERNEL = {"adamw": "_adamw_compiled", "sgdw": "_sgdw_compiled",
                   "lion": "_lion_compiled", "novograd": "_novograd_compiled",
                   "fadam": "_fadam_compiled", "schedule": "_schedule_free_compiled",
                   "adamp": "_adamp_compiled", "sgdp": "_sgdp_compiled"}


def _grad(w: torch.Tensor, i: int, gen: torch.Generator) -> torch.Tensor:
    """Orthogonal to w per row (i = 0: AdamP/SGDP's channel view), to w as a whole (i = 1: the
    layer view), or random (no projection)."""
    g = torch.randn(w.shape, generator=gen, dtype=torch.float64).to(w.dtype)
    if i > 1:
        return g
    rows = w.reshape(w.size(0), -1) if i == 0 else w.reshape(1, -1)
    gr = g.reshape(rows.shape)
    coef = (gr * rows).sum(dim=1, keepdim=True) / rows.square().sum(dim=1, keepdim=True)
    return (gr - coef * rows).reshape(w.shape)


def _run(build: Builder, impl: str, dtype: torch.dtype,
         shapes: list[tuple[int, ...]] = SHAPES) -> tuple[list[torch.Tensor], Any]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype))
              for s in shapes]
    opt = build(params, impl)
    for _ in range(STEPS):
        for i, p in enumerate(params):
            p.grad = _grad(p.detach(), i, gen)
        opt.step()
    state = [v.double() for s in opt.state_dict()["state"].values()
             for _, v in sorted(s.items()) if isinstance(v, torch.Tensor)]
    return [p.detach().clone() for p in params], state


def _assert_close(got: list[torch.Tensor], want: list[torch.Tensor], what: str,
                  **tol: float) -> None:
    assert len(got) == len(want), what
    for i, (x, y) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(x, y, **tol, msg=lambda m, i=i: f"{what} {i}: {m}")


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> dict[Any, Any]:
    """impl="compiled" through the aot_eager backend, with a fresh cache of compiled graphs."""
    monkeypatch.setattr(_common, "COMPILE_BACKEND", "aot_eager")
    monkeypatch.setattr(_common, "_COMPILED", {})
    return _common._COMPILED


@pytest.mark.parametrize("name", list(BUILDERS))
def test_compiled_matches_the_reference(name: str, traced: dict[Any, Any]) -> None:
    """float64, so that a wrong formula shows far above rounding: the compiled NovoGrad and
    FAdam compute their layer norms and RMS clips inside the graph, the reference in Python."""
    want, want_state = _run(BUILDERS[name], "reference", torch.float64)
    got, state = _run(BUILDERS[name], "compiled", torch.float64)
    kernel = COMPILED_KERNEL[name.split("-")[0]]
    assert kernel in {update.__name__ for update, _ in traced}, "the compiled path did not run"
    _assert_close(got, want, f"{name} param", rtol=1e-10, atol=1e-12)
    _assert_close(state, want_state, f"{name} state", rtol=1e-10, atol=1e-12)


def test_the_gradients_exercise_every_projection_view() -> None:
    """AdamP/SGDP's comparisons above cover the channel view, the layer view and none."""
    gen = torch.Generator().manual_seed(3)
    views = []
    for i, shape in enumerate(SHAPES):
        w = torch.randn(shape, generator=gen, dtype=torch.float64)
        views.append(scale_invariant_view(w, _grad(w, i, gen), 0.1, 1e-8)[0]
                     if w.ndim > 1 else None)
    assert views == ["channel", "layer", None]


def _inductor_unavailable() -> str | None:
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python"
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "inductor needs a C++ compiler"
    return None


@pytest.mark.skipif(_inductor_unavailable() is not None,
                    reason=_inductor_unavailable() or "")
def test_compiled_adamw_through_inductor_matches_the_reference() -> None:
    """The real backend end to end: generated C++ against the reference, float32 rounding.
    One 2-D parameter: every shape of SHAPES is its own inductor graph (seconds of C++ each),
    and the aot_eager comparisons above already cover the shapes. Dynamo's caches are reset
    first: the tests above fill _adamw_compiled's recompile limit (8), past which dynamo
    would quietly run the function eagerly and this test would not reach inductor."""
    torch._dynamo.reset()
    want, want_state = _run(BUILDERS["adamw"], "reference", torch.float32, [(6, 5)])
    got, state = _run(BUILDERS["adamw"], "compiled", torch.float32, [(6, 5)])
    _assert_close(got, want, "param", rtol=1e-5, atol=1e-6)
    _assert_close(state, want_state, "state", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [SCALE, Muon])
def test_optimizers_without_a_compiled_path_name_their_impls(cls: type) -> None:
    impls = ", ".join(["auto", *cls.IMPLS])
    assert "compiled" not in cls.IMPLS
    with pytest.raises(ValueError, match=rf"^impl='compiled' is not available for "
                                         rf"{cls.__name__}; choose one of {impls}$"):
        cls([torch.nn.Parameter(torch.ones(2, 2))], lr=0.1, impl="compiled")
