"""The impl= keyword: every implementation of every optimizer computes the same update, and the
generic path (impl="foreach", what non-CPU devices run) makes no host sync and stays within
torch's foreach AdamW's op count."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import torch

from wdlab.optim import SCALE, SGDP, SGDW, AdamP, AdamW, FAdam, Lion, Muon, NovoGrad
from wdlab.optim import _native as native
from wdlab.optim._dispatch import IMPLS
from wdlab.optim.opcount import count_step

# Shapes: two (8, 6) matrices (stacked together), a (4, 3, 2) conv-like weight, a (5, 6)
# matrix, vectors. AdamP/SGDP see one channel-invariant, one layer-invariant, one plain matrix.
SHAPES = [(8, 6), (8, 6), (4, 3, 2), (5, 6), (6,), (4,)]
ROLES = ["matrix", "output", "matrix", "embedding", "vector", "bias"]


def _groups(params: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
    """One param group per role, as wdlab.param_groups builds them (SCALE and Muon read it)."""
    return [{"params": [p], "role": r} for p, r in zip(params, ROLES, strict=True)]


Builder = Callable[[list[torch.nn.Parameter], str], torch.optim.Optimizer]
BUILDERS: dict[str, Builder] = {
    "adamw": lambda ps, impl: AdamW(ps, lr=0.01, weight_decay=0.1, impl=impl),
    "adamw-l2": lambda ps, impl: AdamW(ps, lr=0.01, weight_decay=0.1, decay="l2", impl=impl),
    "sgdw": lambda ps, impl: SGDW(ps, lr=0.05, momentum=0.9, weight_decay=0.1, impl=impl),
    "sgdw-nesterov-l2": lambda ps, impl: SGDW(ps, lr=0.05, momentum=0.9, nesterov=True,
                                              weight_decay=0.1, decay="l2", impl=impl),
    "lion": lambda ps, impl: Lion(ps, lr=1e-3, weight_decay=0.5, impl=impl),
    "muon": lambda ps, impl: Muon(_groups(ps), lr=0.02, weight_decay=0.1,
                                  ns_dtype=torch.float32, impl=impl),
    "adamp": lambda ps, impl: AdamP(ps, lr=0.01, weight_decay=0.1, impl=impl),
    "adamp-nesterov-l2": lambda ps, impl: AdamP(ps, lr=0.01, weight_decay=0.1, decay="l2",
                                                nesterov=True, impl=impl),
    "sgdp": lambda ps, impl: SGDP(ps, lr=0.05, momentum=0.9, weight_decay=0.1, impl=impl),
    "sgdp-nesterov-l2": lambda ps, impl: SGDP(ps, lr=0.05, momentum=0.9, nesterov=True,
                                              weight_decay=0.1, decay="l2", impl=impl),
    "sgdp-no-momentum": lambda ps, impl: SGDP(ps, lr=0.05, dampening=0.1, weight_decay=0.1,
                                              impl=impl),
    "novograd": lambda ps, impl: NovoGrad(ps, lr=0.01, weight_decay=0.1, grad_averaging=True,
                                          impl=impl),
    "novograd-in-momentum": lambda ps, impl: NovoGrad(ps, lr=0.01, weight_decay=0.1,
                                                      decay_in_momentum=True, impl=impl),
    "fadam": lambda ps, impl: FAdam(ps, lr=0.01, weight_decay=0.1, impl=impl),
    "fadam-p0.25-l2": lambda ps, impl: FAdam(ps, lr=0.01, weight_decay=0.1, p=0.25, clip=0.5,
                                             decay="l2", impl=impl),
    "scale": lambda ps, impl: SCALE(_groups(ps), lr=0.01, weight_decay=0.1, impl=impl),
}
FAMILY = {name: name.split("-")[0] for name in BUILDERS}
CLASSES = {"adamw": AdamW, "sgdw": SGDW, "lion": Lion, "muon": Muon, "adamp": AdamP,
           "sgdp": SGDP, "novograd": NovoGrad, "fadam": FAdam, "scale": SCALE}
STEPS = 4


def _weights(dtype: torch.dtype, shapes: list[tuple[int, ...]] = SHAPES) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]


def _grad(w: torch.Tensor, i: int, gen: torch.Generator) -> torch.Tensor:
    """A gradient with a chosen relation to w: orthogonal per row (0), to the whole (1), none."""
    g = torch.randn(w.shape, generator=gen, dtype=torch.float64).to(w.dtype)
    if w.ndim < 2 or i > 1:
        return g
    rows = w.reshape(w.size(0), -1) if i == 0 else w.reshape(1, -1)
    gr = g.reshape(rows.shape)
    coef = (gr * rows).sum(dim=1, keepdim=True) / rows.square().sum(dim=1, keepdim=True)
    return (gr - coef * rows).reshape(w.shape)


def _run(build: Builder, impl: str, weights: list[torch.Tensor], steps: int = STEPS,
         lr_tensor: bool = False) -> tuple[list[torch.Tensor], dict[str, Any]]:
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    opt = build(params, impl)
    if lr_tensor:
        for group in opt.param_groups:
            group["lr"] = torch.tensor(group["lr"], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for i, p in enumerate(params):
            p.grad = _grad(p.detach(), i, gen)
        opt.step()
    return [p.detach().clone() for p in params], opt.state_dict()["state"]


TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-11}, torch.float32: {"rtol": 2e-5, "atol": 2e-6}}


def _assert_close(got: list[torch.Tensor], want: list[torch.Tensor], tol: dict[str, float],
                  what: str) -> None:
    for i, (x, y) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(x, y, **tol, msg=lambda m, i=i: f"{what}, tensor {i}: {m}")


def _state_tensors(state: dict[str, Any]) -> list[torch.Tensor]:
    return [v.double() for s in state.values() for _, v in sorted(s.items())
            if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_impl_matches_the_reference(name: str, dtype: torch.dtype) -> None:
    build = BUILDERS[name]
    weights = _weights(dtype)
    want, want_state = _run(build, "reference", weights)
    assert max(float((w - x).abs().max()) for w, x in zip(want, weights, strict=True)) > 1e-3
    cls = CLASSES[FAMILY[name]]
    impls = [i for i in ("foreach", "native", "auto") if i == "auto" or i in cls.IMPLS]
    if not native.available():
        impls = [i for i in impls if i != "native" or FAMILY[name] in ("adamw", "adamp", "sgdp")]
    tol = dict(TOL[dtype])
    if FAMILY[name] == "muon":  # float32 Newton-Schulz: mm vs bmm accumulate differently
        tol = {"rtol": 1e-5, "atol": 1e-6}
    for impl in impls:
        got, state = _run(build, impl, weights)
        _assert_close(got, want, tol, f"{name} impl={impl} params")
        _assert_close(_state_tensors(state), _state_tensors(want_state), tol,
                      f"{name} impl={impl} state")


def test_projection_is_exercised() -> None:
    """The AdamP/SGDP comparisons above cover all three views: channel, layer and none."""
    from wdlab.optim.functional.adamp import _views

    w = _weights(torch.float64)[:4]
    gen = torch.Generator().manual_seed(1)
    found = []
    for i in (0, 1, 3):
        g = _grad(w[i], i, gen)
        rows = w[i].reshape(w[i].size(0), -1)
        channel, layer, _, _ = _views(rows[None], g.reshape(rows.shape)[None], 0.1, 1e-8)
        found.append((bool(channel), bool(layer)))
    assert found == [(True, False), (False, True), (False, False)]


# ---- zero host syncs and the op budget on the generic path --------------------------------

MODEL_SHAPES = [(32, 32)] * 20 + [(64, 32)] * 5 + [(32,)] * 25  # 50 tensors
MODEL_ROLES = ["matrix"] * 24 + ["output"] + ["vector"] * 25


def _model_params(copies: int = 1) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    shapes = [s for s in MODEL_SHAPES for _ in range(copies)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    return params


def _model_groups(params: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
    """One group per role, as wdlab.param_groups makes them."""
    by_role: dict[str, list[torch.nn.Parameter]] = {}
    roles = [r for r in MODEL_ROLES for _ in range(len(params) // len(MODEL_ROLES))]
    for p, role in zip(params, roles, strict=True):
        by_role.setdefault(role, []).append(p)
    return [{"params": ps, "role": role} for role, ps in by_role.items()]


FAMILIES: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
    "adamw": lambda ps: AdamW(ps, impl="foreach"),
    "sgdw": lambda ps: SGDW(ps, lr=0.1, momentum=0.9, weight_decay=0.1, impl="foreach"),
    "lion": lambda ps: Lion(ps, weight_decay=0.1, impl="foreach"),
    "muon": lambda ps: Muon(_model_groups(ps), impl="foreach"),
    "adamp": lambda ps: AdamP(ps, weight_decay=0.1, impl="foreach"),
    "sgdp": lambda ps: SGDP(ps, lr=0.1, momentum=0.9, weight_decay=0.1, impl="foreach"),
    "novograd": lambda ps: NovoGrad(ps, weight_decay=0.1, impl="foreach"),
    "fadam": lambda ps: FAdam(ps, impl="foreach"),
    "scale": lambda ps: SCALE(_model_groups(ps), weight_decay=0.1, impl="foreach"),
}


def _counted(opt: torch.optim.Optimizer) -> Any:
    opt.step()  # creates the state: the budget is about the steady-state step
    return count_step(opt)


@pytest.fixture(scope="module")
def torch_adamw_ops() -> int:
    count = _counted(torch.optim.AdamW(_model_params(), foreach=True))
    assert not count.syncs and count.host_reads == 100  # torch reads each step counter twice
    return count.total


@pytest.mark.parametrize("name", list(FAMILIES))
def test_foreach_step_has_no_host_sync_and_fits_the_op_budget(
    name: str, torch_adamw_ops: int
) -> None:
    opt = FAMILIES[name](_model_params())
    assert {g["impl"] for g in opt.param_groups} == {"foreach"}
    count = _counted(opt)
    assert count.syncs == [], f"{name}: host syncs {count.syncs}"
    assert count.total <= torch_adamw_ops, f"{name}: {count.total} ops > {torch_adamw_ops}"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_op_count_does_not_grow_with_the_number_of_tensors(name: str) -> None:
    """Twice the tensors of the same shapes: the same ops (AdamP/SGDP, Muon and SCALE pay per
    distinct matrix shape, see docs/performance.md; nothing pays per tensor)."""
    once = _counted(FAMILIES[name](_model_params()))
    twice = _counted(FAMILIES[name](_model_params(copies=2)))
    assert twice.total == once.total and twice.syncs == []


def test_the_counter_sees_a_host_sync() -> None:
    """The premise of the test above: a per-tensor float() in step() is caught."""
    params = _model_params()
    opt = NovoGrad(params, weight_decay=0.1, impl="reference")
    count = _counted(opt)
    assert len(count.syncs) >= len(params)


# ---- tensor lr, the keyword's errors and its older names ----------------------------------


@pytest.mark.parametrize("impl", ["reference", "foreach"])
@pytest.mark.parametrize("name", ["adamw", "sgdw", "muon", "adamp", "fadam", "scale"])
def test_tensor_lr_gives_the_float_lr_result(name: str, impl: str) -> None:
    weights = _weights(torch.float64)
    want, _ = _run(BUILDERS[name], impl, weights)
    got, _ = _run(BUILDERS[name], impl, weights, lr_tensor=True)
    _assert_close(got, want, {"rtol": 0, "atol": 0}, f"{name} tensor lr")


def test_tensor_lr_follows_a_scheduler() -> None:
    w = torch.nn.Parameter(torch.ones(3))
    opt = SGDW([w], lr=torch.tensor(0.1), weight_decay=0.5, decay="independent",
               impl="foreach")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    for _ in range(2):
        w.grad = torch.zeros(3)
        opt.step()
        sched.step()
    # decay rate (lr/initial_lr)*wd: 0.5 then 0.25; initial_lr is a copy, not the tensor lr
    torch.testing.assert_close(w.detach(), torch.full((3,), 0.5 * 0.75))
    assert float(opt.param_groups[0]["initial_lr"]) == pytest.approx(0.1)


def test_tensor_lr_must_be_one_cpu_element() -> None:
    w = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=r"^a Tensor lr must be one floating-point element"):
        AdamW([w], lr=torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("cls", [AdamW, SGDW, Lion, Muon, AdamP, SGDP, NovoGrad, FAdam])
def test_unknown_impl_is_an_error_naming_the_field(cls: type) -> None:
    kw = {"lr": 0.1}
    with pytest.raises(ValueError, match=r"^impl must be one of auto, reference, native, "
                                         r"foreach, compiled; got 'fast'"):
        cls([torch.nn.Parameter(torch.ones(2, 2))], impl="fast", **kw)
    assert set(cls.IMPLS) <= set(IMPLS)


def test_impl_an_optimizer_lacks_names_its_choices() -> None:
    with pytest.raises(ValueError, match=r"^impl='compiled' is not available for SCALE; "
                                         r"choose one of auto, reference, native, foreach$"):
        SCALE([torch.nn.Parameter(torch.ones(2))], impl="compiled")
    with pytest.raises(ValueError, match=r"^impl='native' is not available for Muon"):
        Muon([torch.nn.Parameter(torch.ones(2, 2))], impl="native")


def test_older_keywords_map_onto_impl() -> None:
    w = [torch.nn.Parameter(torch.ones(2))]
    assert SGDW(w, lr=0.1, mode="whole").param_groups[0]["impl"] == "reference"
    assert Lion(w, mode="native").param_groups[0]["impl"] == "native"
    assert AdamW(w, fused=False).param_groups[0]["impl"] == "reference"
    assert AdamW(w, fused=True).param_groups[0]["impl"] == "native"
    assert AdamW(w, fused=True, impl="native").param_groups[0]["impl"] == "native"
    with pytest.raises(ValueError, match=r"^SGDW: impl='foreach' contradicts the older keyword"):
        SGDW(w, lr=0.1, mode="chunked", impl="foreach")
    with pytest.raises(ValueError, match=r"^mode must be one of auto, native, chunked, whole"):
        NovoGrad(w, mode="fast")


def test_a_state_dict_with_the_older_mode_key_loads() -> None:
    w = torch.nn.Parameter(torch.ones(3))
    old = SGDW([w], lr=0.1, momentum=0.9)
    w.grad = torch.ones(3)
    old.step()
    saved = old.state_dict()
    saved["param_groups"][0].pop("impl")
    saved["param_groups"][0]["mode"] = "whole"  # what an older wdlab wrote
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    new = SGDW([w], lr=0.1, momentum=0.9)
    new.load_state_dict(torch.load(buffer, weights_only=True))
    assert new.param_groups[0]["impl"] == "reference" and "mode" not in new.param_groups[0]


def test_impl_is_chosen_per_device_and_dtype_bucket() -> None:
    """auto on CPU: native where the C kernels take the tensors, reference elsewhere."""
    from wdlab.optim._dispatch import choose

    a, b = torch.zeros(3), torch.zeros(3, dtype=torch.bfloat16)
    plan = choose({"impl": "auto"}, [[a, b]], lambda ps: all(p.dtype == torch.float32
                                                                for p in ps))
    assert plan == [("reference", [0, 1])]  # one CPU device: one decision for the group
    plan = choose({"impl": "auto"}, [[a]], lambda ps: True)
    assert plan == [("native", [0])]
    with pytest.raises(ValueError, match=r"^impl='native' cannot run: nope; use impl='auto'"):
        choose({"impl": "native"}, [[a]], lambda ps: False, lambda: "nope")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_auto_takes_the_foreach_path_on_a_non_cpu_device(name: str) -> None:
    """The meta device stands in for a GPU here: impl="auto" must choose "foreach" there, and
    any host read of a device value (.item() cannot run on meta) or any CPU tensor mixed into
    the device math (other than the CPU step counters) fails."""
    params = [torch.nn.Parameter(torch.empty(s, device="meta")) for s in MODEL_SHAPES]
    for p in params:
        p.grad = torch.empty(p.shape, device="meta")
    opt = FAMILIES[name](params)
    for group in opt.param_groups:
        group["impl"] = "auto"
    count = _counted(opt)
    assert count.syncs == []
    steps = [s["step"] for s in opt.state.values() if "step" in s]
    assert all(s.device.type == "cpu" for s in steps)  # torch's capturable=False layout


def _on_meta(name: str, **group: Any) -> torch.optim.Optimizer:
    """FAMILIES[name] on meta tensors (a stand-in GPU), impl="auto", `group` set in each
    group (weight_decay 0.1 unless given)."""
    params = [torch.nn.Parameter(torch.empty(s, device="meta")) for s in MODEL_SHAPES]
    for p in params:
        p.grad = torch.empty(p.shape, device="meta")
    opt = FAMILIES[name](params)
    for g in opt.param_groups:
        g.update({"impl": "auto", "weight_decay": 0.1, **group})
    return opt


@pytest.mark.parametrize("target", ["init", "ema", "one"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_decay_targets_have_no_host_sync_and_fit_the_op_budget(
    name: str, target: str, torch_adamw_ops: int
) -> None:
    """decay_to="init" | "ema" | "one" on the device path: the pull toward the target (and the
    EMA target's own update) are multi-tensor ops, no value is read on the host, and the step
    stays within torch AdamW's op count (decay_to="zero" is the test above)."""
    opt = _on_meta(name, decay_to=target)
    count = _counted(opt)
    assert count.syncs == [], f"{name} decay_to={target}: host syncs {count.syncs}"
    assert count.total <= torch_adamw_ops, f"{name}: {count.total} ops > {torch_adamw_ops}"
    pulls = count.ops["aten._foreach_lerp_.Scalar"] + count.ops["aten._foreach_add_.Scalar"]
    assert pulls >= (2 if target == "ema" else 1)  # the decay ran (not skipped at wd 0)
    targets = [s["decay_target"] for s in opt.state.values() if "decay_target" in s]
    assert len(targets) == (len(MODEL_SHAPES) if target in ("init", "ema") else 0)
    assert all(t.device.type == "meta" for t in targets)  # kept beside p, never on the host


# ---- CautiousUpdate on the generic path ---------------------------------------------------

CAUTIOUS_BUCKET_OPS = 12
"""CautiousUpdate's own ops per (device, dtype) bucket: the snapshot, Δ, the mask (3), its
count, the rescale (3), Δ*m*scale (2), the restore; per group it adds the masked update and
the decay (1-3). Before the multi-tensor path: ~17 ops per tensor, 855-862 on MODEL_SHAPES."""


@pytest.mark.parametrize("target", ["zero", "ema"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_cautious_update_has_no_host_sync_and_a_fixed_op_cost(
    name: str, target: str, torch_adamw_ops: int
) -> None:
    """CautiousUpdate (the C- optimizers) on the device path: the mask u*g > 0 and its
    per-tensor rescale numel/(sum+1) stay tensors (no .item()), around every family, with
    the plain decay and with a decay target, in a fixed number of multi-tensor ops over the
    inner optimizer's own (one bucket here: all float32 on one device)."""
    from wdlab.optim.wrappers import CautiousUpdate

    opt = CautiousUpdate(_on_meta(name, decay_to=target))
    count = _counted(opt)
    assert count.syncs == [], f"cautious {name} decay_to={target}: host syncs {count.syncs}"
    inner = _counted(_on_meta(name, decay_to=target))
    assert count.ops["aten._foreach_clamp_max_.Scalar"] >= 1  # the mask was taken
    assert count.ops["aten.lt.Scalar"] == inner.ops["aten.lt.Scalar"]  # ... not per tensor
    budget = inner.total + CAUTIOUS_BUCKET_OPS + 3 * len(opt.param_groups)
    assert count.total <= budget, f"cautious {name}: {count.total} ops > {budget}"
    if name in ("adamw", "sgdw", "lion"):
        assert count.total <= torch_adamw_ops, f"cautious {name}: {count.total} ops"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_cautious_op_count_does_not_grow_with_the_number_of_tensors(name: str) -> None:
    from wdlab.optim.wrappers import CautiousUpdate

    once = _counted(CautiousUpdate(FAMILIES[name](_model_params())))
    twice = _counted(CautiousUpdate(FAMILIES[name](_model_params(copies=2))))
    assert twice.total == once.total and twice.syncs == []


CAUTIOUS_NAMES = ["adamw", "adamw-l2", "lion", "sgdw", "sgdw-nesterov-l2"]


@pytest.mark.parametrize("name", CAUTIOUS_NAMES)
def test_cautious_foreach_path_matches_the_reference(name: str) -> None:
    """CautiousUpdate's multi-tensor path against its per-tensor loop, float64: equal to the
    last bit around the same inner impl (the same arithmetic; two dtype buckets too), and to
    rounding with the inner optimizer's foreach path under it against its reference one."""
    from wdlab.optim.wrappers import CautiousUpdate

    build = BUILDERS[name]

    def wrapped(path: str) -> Builder:
        return lambda ps, impl: CautiousUpdate(build(ps, impl), impl=path)

    weights = _weights(torch.float64)
    want, want_state = _run(wrapped("reference"), "reference", weights)
    plain, _ = _run(build, "reference", weights)  # the mask changed the result
    assert max(float((w - x).abs().max()) for w, x in zip(want, plain, strict=True)) > 1e-4
    got, _ = _run(wrapped("foreach"), "reference", weights)
    _assert_close(got, want, {"rtol": 0, "atol": 0}, f"cautious {name}, same inner impl")
    mixed = [w.float() if i % 2 else w for i, w in enumerate(weights)]
    got, _ = _run(wrapped("foreach"), "reference", mixed)
    want_mixed, _ = _run(wrapped("reference"), "reference", mixed)
    _assert_close(got, want_mixed, {"rtol": 0, "atol": 0}, f"cautious {name}, two dtypes")
    got, state = _run(wrapped("auto"), "foreach", weights)  # auto follows impl="foreach"
    _assert_close(got, want, TOL[torch.float64], f"cautious {name} on inner foreach")
    _assert_close(_state_tensors(state), _state_tensors(want_state), TOL[torch.float64],
                  f"cautious {name} on inner foreach, state")


@pytest.mark.parametrize(("make", "path"), [
    (lambda ps: AdamW(ps, weight_decay=0.1, impl="foreach"), "foreach"),
    (lambda ps: AdamW(ps, weight_decay=0.1, impl="reference"), "reference"),
    (lambda ps: AdamW(ps, weight_decay=0.1), "reference"),  # auto on the CPU
    (lambda ps: torch.optim.AdamW(ps, weight_decay=0.1, foreach=True), "foreach"),
    (lambda ps: torch.optim.AdamW(ps, weight_decay=0.1), "reference"),
], ids=["foreach", "reference", "auto-cpu", "torch-foreach", "torch-default-cpu"])
def test_cautious_path_follows_the_group(make: Callable[..., Any], path: str) -> None:
    """With impl="auto" the wrapper takes the path the group's update takes (on the CPU here;
    off it, test_cautious_update_has_no_host_sync_and_a_fixed_op_cost)."""
    from wdlab.optim.wrappers import CautiousUpdate

    count = _counted(CautiousUpdate(make(_model_params())))
    per_tensor = count.ops["aten.lt.Scalar"]
    assert per_tensor == (len(MODEL_SHAPES) if path == "reference" else 0)
    with pytest.raises(ValueError, match=r"^impl must be one of auto, reference, foreach"):
        CautiousUpdate(make(_model_params()), impl="native")
