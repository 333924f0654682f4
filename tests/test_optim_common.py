"""What AdamW, SGDW and Lion share: argument errors, the chunked fast path, resuming.

Resuming: save at step k (through torch.save/torch.load), load into a fresh model and
optimizer (and LR scheduler), continue; the result must equal an uninterrupted run bit for bit.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import torch

from wdlab.optim.adamw import AdamW
from wdlab.optim.functional import foreach_elementwise
from wdlab.optim.lion import Lion
from wdlab.optim.sgdw import SGDW

torch.set_num_threads(1)

FACTORIES: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": lambda params, **kw: AdamW(params, lr=1e-2, weight_decay=0.1, **kw),
    "adamw_unfused": lambda params, **kw: AdamW(
        params, lr=1e-2, weight_decay=0.1, fused=False, **kw
    ),
    "sgdw": lambda params, **kw: SGDW(params, lr=0.1, momentum=0.9, weight_decay=0.1, **kw),
    "sgdw_nesterov": lambda params, **kw: SGDW(
        params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1, **kw
    ),
    "lion": lambda params, **kw: Lion(params, lr=1e-3, weight_decay=0.5, **kw),
}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))


def _set_grads(model: torch.nn.Module, step: int) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _make(name: str, model: torch.nn.Module, decay: str) -> tuple[Any, Any]:
    opt = FACTORIES[name](model.parameters(), decay=decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.1 * s))
    return opt, sched


def _run(model: torch.nn.Module, opt: Any, sched: Any, steps: range) -> None:
    for step in steps:
        _set_grads(model, step)
        opt.step()
        sched.step()


@pytest.mark.parametrize("decay", ["decoupled", "independent", "l2"])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_resume_from_state_dict_equals_uninterrupted_run(name: str, decay: str) -> None:
    total, k = 12, 5
    model = _model()
    opt, sched = _make(name, model, decay)
    _run(model, opt, sched, range(total))
    expected = _flat(model)

    model = _model()
    opt, sched = _make(name, model, decay)
    _run(model, opt, sched, range(k))
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    model = _model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the load must overwrite everything
    opt, sched = _make(name, model, decay)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    _run(model, opt, sched, range(k, total))
    assert torch.equal(_flat(model), expected)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_independent_decay_follows_schedule_multiplier(name: str) -> None:
    """With zero gradients (and fresh state) only the decay moves w: by (lr/initial_lr)*wd."""
    w = torch.nn.Parameter(torch.full((4,), 2.0, dtype=torch.float64))
    opt = FACTORIES[name]([w], decay="independent")
    group = opt.param_groups[0]
    group["lr"] = group["initial_lr"] / 4  # as a scheduler would set it
    w.grad = torch.zeros_like(w)
    before = w.detach().clone()
    opt.step()  # zero gradient: no Adam/SGD step, and Lion's sign(0) = 0
    expected = before * (1 - 0.25 * group["weight_decay"])
    assert torch.allclose(w.detach(), expected, rtol=0, atol=1e-12)


def test_chunked_mode_equals_whole_tensor_calls() -> None:
    """The fast path's slicing (rows, broadcast factors, None) must not change the result."""

    def update(
        p: torch.Tensor,
        g: torch.Tensor,
        row: torch.Tensor,
        scale: torch.Tensor,
        none: None,
        *,
        a: float,
    ) -> None:
        assert none is None
        p.mul_(1 - a).add_(g * row, alpha=-a).add_(scale)

    gen = torch.Generator().manual_seed(0)
    shapes = [(13, 5), (40,), (3, 4, 5)]
    ps = [torch.randn(s, generator=gen) for s in shapes]
    gs = [torch.randn(s, generator=gen) for s in shapes]
    rows = [torch.randn((s[0],) + (1,) * (len(s) - 1), generator=gen) for s in shapes]
    scales = [torch.randn((), generator=gen) for _ in shapes]
    nones = [None] * len(shapes)
    whole = [p.clone() for p in ps]
    foreach_elementwise(update, [whole, gs, rows, scales, nones], {"a": 0.3}, mode="whole")
    chunked = [p.clone() for p in ps]
    foreach_elementwise(update, [chunked, gs, rows, scales, nones], {"a": 0.3}, chunk_numel=7)
    for x, y in zip(whole, chunked, strict=True):
        assert torch.equal(x, y)
    expected = ps[0] * 0.7 - 0.3 * gs[0] * rows[0] + scales[0]
    assert torch.allclose(whole[0], expected, atol=1e-6)


def test_unknown_mode_is_refused() -> None:
    modes = r"mode must be one of auto, native, chunked, whole, compiled"
    with pytest.raises(ValueError, match=modes):
        foreach_elementwise(lambda p: None, [[torch.zeros(1)]], mode="fast")
    with pytest.raises(ValueError, match=r"mode must be one of"):
        Lion([torch.nn.Parameter(torch.zeros(2))], mode="fast")


# ---- invalid hyperparameters ---------------------------------------------------------------


def _param() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: AdamW(_param(), lr=-1.0), r"^lr must be a number in \[0\.0, inf\)"),
        (lambda: SGDW(_param(), lr=-0.1), r"^lr must be a number in \[0\.0, inf\)"),
        (lambda: Lion(_param(), lr=-1e-4), r"^lr must be a number in \[0\.0, inf\)"),
        (
            lambda: AdamW(_param(), betas=(1.0, 0.999)),
            r"^betas\[0\] must be a number in \[0\.0, 1\.0\)",
        ),
        (
            lambda: AdamW(_param(), betas=(0.9, -0.1)),
            r"^betas\[1\] must be a number in \[0\.0, 1\.0\)",
        ),
        (
            lambda: Lion(_param(), betas=(0.9, 1.5)),
            r"^betas\[1\] must be a number in \[0\.0, 1\.0\)",
        ),
        (lambda: Lion(_param(), betas=0.9), r"^betas must be a pair"),
        (lambda: AdamW(_param(), eps=-1e-8), r"^eps must be a number in \[0\.0, inf\)"),
        (lambda: AdamW(_param(), weight_decay=-0.1), r"^weight_decay must be a number in \[0\.0"),
        (
            lambda: AdamW(_param(), decay="coupled"),
            r"^decay must be one of decoupled, independent, l2",
        ),
        (
            lambda: SGDW(_param(), lr=0.1, decay="L2"),
            r"^decay must be one of decoupled, independent, l2",
        ),
        (lambda: Lion(_param(), decay=None), r"^decay must be one of decoupled, independent, l2"),
        (
            lambda: SGDW(_param(), lr=0.1, momentum=1.0),
            r"^momentum must be a number in \[0\.0, 1\.0\)",
        ),
        (
            lambda: SGDW(_param(), lr=0.1, momentum=-0.5),
            r"^momentum must be a number in \[0\.0, 1\.0\)",
        ),
        (
            lambda: SGDW(_param(), lr=0.1, dampening=2.0),
            r"^dampening must be a number in \[0\.0, 1\.0\]",
        ),
        (
            lambda: SGDW(_param(), lr=0.1, momentum=0.0, nesterov=True),
            r"^nesterov=True needs momentum in \(0, 1\)",
        ),
        (lambda: SGDW(_param()), r"^lr is required for SGDW"),
        (lambda: AdamW(_param(), fused="yes"), r"^fused must be None, True or False"),
        (
            lambda: AdamW([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))]),
            r"complex parameters",
        ),
        (
            lambda: SGDW([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))], lr=0.1),
            r"complex parameters",
        ),
        (
            lambda: Lion([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))]),
            r"complex parameters",
        ),
    ],
)
def test_bad_hyperparameters_name_the_argument(make: Callable[[], Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        make()


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_sparse_gradient_is_refused(name: str) -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = FACTORIES[name](emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(
        ValueError, match=r"does not support sparse gradients; use nn.Embedding\(sparse=False\)"
    ):
        opt.step()


def test_bad_hyperparameter_in_added_group_is_refused() -> None:
    opt = SGDW(_param(), lr=0.1)
    with pytest.raises(ValueError, match=r"^momentum must be"):
        opt.add_param_group({"params": _param(), "momentum": 2.0})


def test_fused_true_on_integer_params_is_refused() -> None:
    from wdlab.optim.functional import adamw_step

    p = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"^fused=True needs floating-point params"):
        adamw_step(
            [p],
            [p],
            [p],
            [p],
            [torch.zeros(())],
            lr=1.0,
            beta1=0.9,
            beta2=0.9,
            eps=1e-8,
            weight_decay=0.0,
            decoupled=True,
            fused=True,
        )
