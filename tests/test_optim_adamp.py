"""AdamP / SGDP against the clovaai/AdamP rule written out independently here, and against torch."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wdlab.optim import SGDP, AdamP
from wdlab.optim.functional import adamp_project, scale_invariant_view

torch.set_num_threads(1)


# ---- the reference rule, float64, one tensor at a time -----------------------------------------


def ref_view(w: torch.Tensor, g: torch.Tensor, delta: float, eps: float) -> str | None:
    """First of channel/layer whose max |cos(g_row, w_row)| is below delta/sqrt(row_dim)."""
    if w.ndim < 2:
        return None
    for name, rows in (("channel", w.shape[0]), ("layer", 1)):
        wv, gv = w.reshape(rows, -1), g.reshape(rows, -1)
        cos = F.cosine_similarity(gv, wv, dim=1, eps=eps).abs()
        if cos.max() < delta / math.sqrt(wv.shape[1]):
            return name
    return None


def ref_project(w: torch.Tensor, u: torch.Tensor, view: str, eps: float) -> torch.Tensor:
    rows = w.shape[0] if view == "channel" else 1
    wv, uv = w.reshape(rows, -1), u.reshape(rows, -1)
    w_hat = wv / (wv.norm(dim=1, keepdim=True) + eps)
    return (uv - w_hat * (w_hat * uv).sum(dim=1, keepdim=True)).reshape(u.shape)


def ref_adamp(w, g, m, v, t, *, lr, betas, eps, wd, delta, wd_ratio, nesterov, rate=None):
    """One AdamP step; `rate` overrides the decoupled decay rate lr*wd (independent mode)."""
    b1, b2 = betas
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    denom = v.sqrt() / math.sqrt(1 - b2**t) + eps
    u = (b1 * m + (1 - b1) * g) / denom if nesterov else m / denom
    view = ref_view(w, g, delta, eps)
    ratio = 1.0
    if view is not None:
        u = ref_project(w, u, view, eps)
        ratio = wd_ratio
    rate = lr * wd if rate is None else rate
    w = w * (1 - rate * ratio) - lr / (1 - b1**t) * u
    return w, m, v, view


def ref_sgdp(w, g, buf, *, lr, momentum, dampening, nesterov, wd, eps, delta, wd_ratio):
    buf = momentum * buf + (1 - dampening) * g
    u = g + momentum * buf if nesterov else buf
    view = ref_view(w, g, delta, eps)
    ratio = 1.0
    if view is not None:
        u = ref_project(w, u, view, eps)
        ratio = wd_ratio
        if not nesterov:
            buf = u  # clovaai projects the buffer itself in place
    w = w * (1 - lr * wd * ratio / (1 - momentum)) - lr * u
    return w, buf, view


# ---- models whose first weight is scale-invariant per channel, per layer, or not at all ------


def make_model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    norm = {"channel": nn.BatchNorm1d(12), "layer": nn.LayerNorm(12), "none": nn.Tanh()}[kind]
    return nn.Sequential(nn.Linear(6, 12, bias=False), norm, nn.Linear(12, 3)).double()


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 6, generator=gen, dtype=torch.float64), torch.randint(
        0, 3, (16,), generator=gen
    )


def compute_grads(model: nn.Module, step: int) -> None:
    """Cross-entropy; without a norm layer, a weight-norm term makes the first weight's gradient
    clearly radial, so that neither view can pass by chance."""
    x, y = batch(step)
    model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    if isinstance(model[1], nn.Tanh):
        loss = loss + 0.05 * model[0].weight.square().sum()
    loss.backward()


@pytest.mark.parametrize("kind", ["channel", "layer", "none"])
def test_views_detected(kind: str) -> None:
    model = make_model(kind)
    compute_grads(model, 0)
    w = model[0].weight.detach()
    view, _ = scale_invariant_view(w, model[0].weight.grad, 0.1, 1e-8)
    assert view == (None if kind == "none" else kind)
    assert view == ref_view(w, model[0].weight.grad, 0.1, 1e-8)


@pytest.mark.parametrize("kind", ["channel", "layer", "none"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_adamp_matches_formula(kind: str, nesterov: bool) -> None:
    hp = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, delta=0.1, wd_ratio=0.1, nesterov=nesterov)
    model = make_model(kind)
    opt = AdamP(model.parameters(), weight_decay=0.05, **hp)
    ref = {n: (p.detach().clone(), torch.zeros_like(p), torch.zeros_like(p))
           for n, p in model.named_parameters()}
    views = []
    for t in range(1, 5):
        compute_grads(model, t)
        for n, p in model.named_parameters():
            w, m, v = ref[n]
            w, m, v, view = ref_adamp(w, p.grad, m, v, t, wd=0.05, **hp)
            ref[n] = (w, m, v)
            if n == "0.weight":
                views.append(view)
        opt.step()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), ref[n][0], rtol=1e-10, atol=1e-12)
    assert set(views) == {None if kind == "none" else kind}


@pytest.mark.parametrize("kind", ["channel", "layer", "none"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgdp_matches_formula(kind: str, nesterov: bool) -> None:
    hp = dict(lr=0.05, momentum=0.9, dampening=0.0, nesterov=nesterov, eps=1e-8, delta=0.1,
              wd_ratio=0.1)
    model = make_model(kind)
    opt = SGDP(model.parameters(), weight_decay=0.01, **hp)
    ref = {n: (p.detach().clone(), torch.zeros_like(p)) for n, p in model.named_parameters()}
    for t in range(1, 5):
        compute_grads(model, t)
        for n, p in model.named_parameters():
            w, buf, _ = ref_sgdp(ref[n][0], p.grad, ref[n][1], wd=0.01, **hp)
            ref[n] = (w, buf)
        opt.step()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), ref[n][0], rtol=1e-10, atol=1e-12)


def test_sgdp_dampening_without_momentum() -> None:
    hp = dict(lr=0.05, momentum=0.0, dampening=0.3, nesterov=False, eps=1e-8, delta=0.1,
              wd_ratio=0.1)
    model = make_model("channel")
    opt = SGDP(model.parameters(), weight_decay=0.01, **hp)
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    for t in range(1, 3):
        compute_grads(model, t)
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        for n, _ in model.named_parameters():
            ref[n] = ref_sgdp(ref[n], grads[n], torch.zeros_like(ref[n]), wd=0.01, **hp)[0]
        opt.step()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), ref[n], rtol=1e-10, atol=1e-12)
            assert torch.equal(p.grad, grads[n])  # the projection must not write into p.grad


def test_adamp_without_projection_is_torch_adamw() -> None:
    torch.manual_seed(0)
    w = torch.randn(10, 20, dtype=torch.float64)
    b = torch.randn(10, dtype=torch.float64)
    ours = [w.clone().requires_grad_(), b.clone().requires_grad_()]
    theirs = [w.clone().requires_grad_(), b.clone().requires_grad_()]
    opt = AdamP(ours, lr=0.01, weight_decay=0.1)
    ref = torch.optim.AdamW(theirs, lr=0.01, weight_decay=0.1)
    for _ in range(4):
        grads = [torch.randn_like(w) + ours[0].detach(), torch.randn_like(b)]  # radial: no view
        assert scale_invariant_view(ours[0].detach(), grads[0], 0.1, 1e-8)[0] is None
        for p, q, g in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgdp_without_projection_l2_is_torch_sgd(nesterov: bool) -> None:
    torch.manual_seed(0)
    w = torch.randn(10, 20, dtype=torch.float64)
    b = torch.randn(10, dtype=torch.float64)
    ours = [w.clone().requires_grad_(), b.clone().requires_grad_()]
    theirs = [w.clone().requires_grad_(), b.clone().requires_grad_()]
    opt = SGDP(ours, lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01, decay="l2")
    ref = torch.optim.SGD(theirs, lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    for _ in range(4):
        grads = [torch.randn_like(w) + ours[0].detach(), torch.randn_like(b)]  # radial: no view
        assert scale_invariant_view(ours[0].detach(), grads[0], 0.1, 1e-8)[0] is None
        for p, q, g in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


# ---- decay: wd_ratio and modes -----------------------------------------------------------------


@pytest.mark.parametrize("cls", ["adamp", "sgdp"])
@pytest.mark.parametrize("wd_ratio", [0.1, 0.5])
def test_wd_ratio_scales_decay_of_projected_weights_only(cls: str, wd_ratio: float) -> None:
    """Zero gradient: cos = 0 so the matrix is projected; only the decay moves the weights."""
    torch.manual_seed(0)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    v = torch.randn(4, dtype=torch.float64, requires_grad=True)
    lr, wd, mom = 0.1, 0.2, 0.5
    if cls == "adamp":
        opt = AdamP([w, v], lr=lr, weight_decay=wd, wd_ratio=wd_ratio)
        denom = 1.0
    else:
        opt = SGDP([w, v], lr=lr, momentum=mom, weight_decay=wd, wd_ratio=wd_ratio)
        denom = 1 - mom
    w0, v0 = w.detach().clone(), v.detach().clone()
    w.grad, v.grad = torch.zeros_like(w), torch.zeros_like(v)
    opt.step()
    torch.testing.assert_close(w.detach(), w0 * (1 - lr * wd * wd_ratio / denom))
    torch.testing.assert_close(v.detach(), v0 * (1 - lr * wd / denom))


def test_projection_removes_radial_part_per_row() -> None:
    torch.manual_seed(0)
    w = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    u = torch.randn_like(w)
    out = adamp_project(w, u.clone(), "channel", 0.0)
    rows = (out.reshape(5, -1) * w.reshape(5, -1)).sum(dim=1)
    torch.testing.assert_close(rows, torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)
    out = adamp_project(w, u.clone(), "layer", 0.0)
    assert abs(float((out * w).sum())) < 1e-12
    with pytest.raises(ValueError, match="view"):
        adamp_project(w, u, "row", 0.0)


@pytest.mark.parametrize("cls", ["adamp", "sgdp"])
def test_independent_decay_follows_schedule_only(cls: str) -> None:
    """With zero gradients the weight shrinks by (1 - (lr_t/lr_0)*wd*ratio) each step."""
    lr0, wd = 0.01, 0.5
    v = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = (AdamP if cls == "adamp" else SGDP)([v], lr=lr0, weight_decay=wd, decay="independent")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5**k)
    expected = torch.ones(3, dtype=torch.float64)
    for k in range(3):
        v.grad = torch.zeros_like(v)
        expected = expected * (1 - 0.5**k * wd)
        opt.step()
        sched.step()
    torch.testing.assert_close(v.detach(), expected)


@pytest.mark.parametrize("kind", ["channel", "none"])
def test_adamp_l2_mode(kind: str) -> None:
    """l2: the gradient with wd*ratio*w added is what the moments see; the test uses raw g."""
    hp = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, delta=0.1, wd_ratio=0.1, nesterov=False)
    wd = 0.05
    model = make_model(kind)
    opt = AdamP(model.parameters(), weight_decay=wd, decay="l2", **hp)
    ref = {n: (p.detach().clone(), torch.zeros_like(p), torch.zeros_like(p))
           for n, p in model.named_parameters()}
    for t in range(1, 4):
        compute_grads(model, t)
        for n, p in model.named_parameters():
            w, m, v = ref[n]
            view = ref_view(w, p.grad, 0.1, 1e-8)
            ratio = 0.1 if view else 1.0
            b1, b2 = hp["betas"]
            g = p.grad + wd * ratio * w
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            u = m / (v.sqrt() / math.sqrt(1 - b2**t) + 1e-8)
            if view:
                u = ref_project(w, u, view, 1e-8)
            ref[n] = (w - 0.01 / (1 - b1**t) * u, m, v)
        opt.step()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), ref[n][0], rtol=1e-10, atol=1e-12)


# ---- state_dict round trip ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_state_dict_round_trip_equals_uninterrupted(name: str) -> None:
    def build():
        model = make_model("channel")
        if name == "adamp":
            opt = AdamP(model.parameters(), lr=0.01, weight_decay=0.1, nesterov=True)
        else:
            opt = SGDP(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.1)
        return model, opt

    def train(model, opt, steps):
        for t in steps:
            compute_grads(model, t)
            opt.step()

    model, opt = build()
    train(model, opt, range(6))
    straight = [p.detach().clone() for p in model.parameters()]

    model, opt = build()
    train(model, opt, range(3))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model, opt = build()
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    train(model, opt, range(3, 6))
    for p, q in zip(model.parameters(), straight, strict=True):
        assert torch.equal(p.detach(), q)


# ---- bad hyperparameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lr": -1.0}, "lr"),
        ({"betas": (0.9, 1.0)}, r"betas\[1\]"),
        ({"betas": 0.9}, "betas"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"decay": "coupled"}, "decay"),
        ({"delta": -0.1}, "delta"),
        ({"wd_ratio": 1.5}, "wd_ratio"),
        ({"nesterov": "yes"}, "nesterov"),
    ],
)
def test_adamp_bad_hyperparameters(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AdamP([torch.zeros(2, 2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "lr is required"),
        ({"lr": 0.1, "momentum": 1.0}, "momentum"),
        ({"lr": 0.1, "dampening": 2.0}, "dampening"),
        ({"lr": 0.1, "nesterov": True}, "nesterov"),
        ({"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}, "nesterov"),
        ({"lr": 0.1, "wd_ratio": -0.1}, "wd_ratio"),
        ({"lr": 0.1, "decay": "L2"}, "decay"),
    ],
)
def test_sgdp_bad_hyperparameters(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SGDP([torch.zeros(2, 2, requires_grad=True)], **kwargs)


def test_registry_builds_both() -> None:
    from wdlab.optim import create

    p = [torch.zeros(2, 2, requires_grad=True)]
    assert isinstance(create("adamp", p), AdamP)
    assert isinstance(create("sgdp", p, lr=0.1), SGDP)


@pytest.mark.parametrize("kind", ["channel", "layer", "none"])
@pytest.mark.parametrize("decay", ["decoupled", "l2"])
def test_fused_and_plain_paths_agree(kind: str, decay: str) -> None:
    """torch's fused kernels (default) and the plain per-op path compute the same step."""
    from wdlab.optim.functional import adamp_step, sgdp_step

    runs = []
    for fused in (True, False):
        model = make_model(kind)
        params = list(model.parameters())
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        steps = [torch.tensor(0.0) for _ in params]
        bufs = [torch.zeros_like(p) for p in params]
        rate, l2 = (1e-3, 0.0) if decay == "decoupled" else (0.0, 0.1)
        with torch.no_grad():
            for t in range(3):
                with torch.enable_grad():
                    compute_grads(model, t)
                grads = [p.grad for p in params]
                adamp_step(params, grads, m, v, steps, lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8,
                           delta=0.1, wd_ratio=0.1, nesterov=False, decay_rate=rate, l2=l2,
                           fused=fused)
                sgdp_step(params, grads, bufs, lr=0.01, momentum=0.9, dampening=0.0,
                          nesterov=False, eps=1e-8, delta=0.1, wd_ratio=0.1, decay_rate=rate,
                          l2=l2, fused=fused)
        runs.append([p.detach() for p in params] + m + v + bufs + steps)
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
