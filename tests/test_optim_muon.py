"""Muon: the update against a float64 Newton-Schulz written here, torch.optim.Muon, torch AdamW."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from wdlab.optim import Muon
from wdlab.optim.functional import newton_schulz

torch.set_num_threads(1)

A, B, C = 3.4445, -4.7750, 2.0315


def ref_ns(m: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Quintic Newton-Schulz in float64 on the wide orientation."""
    x = m.double()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.t()
    x = x / max(float(x.norm()), eps)
    for _ in range(steps):
        gram = x @ x.t()
        x = A * x + (B * gram + C * gram @ gram) @ x
    return x.t() if tall else x


def ref_muon(w, g, buf, *, lr, mu, nesterov, wd, scale_rule, rate=None):
    """One Muon step in float64; `rate` overrides the decoupled decay rate lr*wd."""
    buf = mu * buf + (1 - mu) * g
    u = (1 - mu) * g + mu * buf if nesterov else buf
    rows, cols = u.shape[0], u[0].numel()
    o = ref_ns(u.reshape(rows, -1)).reshape(u.shape)
    s = 0.2 * math.sqrt(max(rows, cols)) if scale_rule == "match_rms_adamw" else math.sqrt(
        max(1.0, rows / cols)
    )
    rate = lr * wd if rate is None else rate
    return w * (1 - rate) - lr * s * o, buf


def grads_for(shapes, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=torch.float64) for s in shapes]


@pytest.mark.parametrize("scale_rule", ["match_rms_adamw", "original"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_matches_float64_formula(scale_rule: str, nesterov: bool) -> None:
    """Wide, tall and conv weights; NS in float32 against float64: agree to ~1e-5 of the step."""
    shapes = [(16, 40), (40, 16), (8, 3, 3, 3)]
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True)
              for s in shapes]
    opt = Muon(params, lr=0.02, nesterov=nesterov, update_scale=scale_rule, weight_decay=0.1,
               ns_dtype=torch.float32)
    ref = [(p.detach().clone(), torch.zeros_like(p)) for p in params]
    for t in range(3):
        grads = grads_for(shapes, t)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        before = [p.detach().clone() for p in params]
        opt.step()
        ref = [ref_muon(w, g, b, lr=0.02, mu=0.95, nesterov=nesterov, wd=0.1,
                        scale_rule=scale_rule) for (w, b), g in zip(ref, grads, strict=True)]
        for p, (w, _), w0 in zip(params, ref, before, strict=True):
            step = (w - w0).abs().max()
            torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-4 * float(step))


def test_muon_conv_weight_is_flattened() -> None:
    conv = nn.Conv2d(3, 8, 3, bias=False).double()
    opt = Muon(conv.parameters(), lr=0.02, weight_decay=0.0, ns_dtype=torch.float32)
    g = grads_for([(8, 3, 3, 3)], 5)[0]
    conv.weight.grad = g
    w0 = conv.weight.detach().clone()
    opt.step()
    o = ref_ns(g.reshape(8, 27)).reshape(8, 3, 3, 3)  # first step: buf = 0.05 g, u ∝ g
    expected = w0 - 0.02 * 0.2 * math.sqrt(27) * o
    torch.testing.assert_close(conv.weight.detach(), expected, rtol=0, atol=1e-6)
    assert "momentum_buffer" in opt.state[conv.weight]


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon: torch >= 2.9")
@pytest.mark.parametrize("scale_rule", ["match_rms_adamw", "original"])
def test_agrees_with_torch_muon(scale_rule: str) -> None:
    """ns_dtype=bfloat16 is torch's computation; float32 differs by bfloat16's rounding only."""
    shapes = [(48, 24), (24, 48)]
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(*s, generator=gen) for s in shapes]
    for ns_dtype, tol in ((torch.bfloat16, 1e-6), (torch.float32, 5e-2)):
        ours = [w.clone().requires_grad_() for w in init]
        theirs = [w.clone().requires_grad_() for w in init]
        opt = Muon(ours, lr=0.02, weight_decay=0.1, update_scale=scale_rule, ns_dtype=ns_dtype)
        ref = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, adjust_lr_fn=scale_rule)
        for t in range(5):
            before = [q.detach().clone() for q in theirs]
            for p, q, g in zip(ours, theirs, grads_for(shapes, t), strict=True):
                p.grad, q.grad = g.float(), g.float()
            opt.step()
            ref.step()
            for p, q, q0 in zip(ours, theirs, before, strict=True):
                rel = (p.detach() - q.detach()).norm() / (q.detach() - q0).norm()
                assert rel <= tol, (ns_dtype, t, float(rel))
                p.data.copy_(q.detach())  # compare one step at a time


def test_non_matrices_get_torch_adamw() -> None:
    """Embedding, output head, vectors and use_muon=False go to AdamW (0.9, 0.95).

    wdlab's AdamW step uses torch's fused kernel on CPU: bit for bit AdamW(fused=True), and
    equal to the default AdamW up to float32 rounding.
    """
    torch.manual_seed(0)
    emb, hidden, head = nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 4)
    norm, extra = nn.LayerNorm(8), nn.Linear(8, 8, bias=False)
    groups = [
        {"params": [hidden.weight], "role": "matrix"},
        {"params": [emb.weight], "role": "embedding"},
        {"params": [head.weight], "role": "output"},
        {"params": [hidden.bias, head.bias, norm.weight, norm.bias]},
        {"params": [extra.weight], "use_muon": False},
    ]
    opt = Muon(groups, lr=0.01, weight_decay=0.1)
    adam_params = [p for g in groups[1:] for p in g["params"]]
    copies = [p.detach().clone().requires_grad_() for p in adam_params]
    plain = [p.detach().clone().requires_grad_() for p in adam_params]
    hp = dict(lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    fused = torch.optim.AdamW(copies, fused=True, **hp)
    default = torch.optim.AdamW(plain, **hp)
    for t in range(4):
        gen = torch.Generator().manual_seed(t)
        for p, q, r in zip(adam_params, copies, plain, strict=True):
            g = torch.randn(p.shape, generator=gen)
            p.grad, q.grad, r.grad = g.clone(), g.clone(), g.clone()
        hidden.weight.grad = torch.randn(8, 8, generator=gen)
        opt.step()
        fused.step()
        default.step()
    for p, q, r in zip(adam_params, copies, plain, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=0)
        torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-5, atol=1e-7)
    assert set(opt.state[hidden.weight]) == {"momentum_buffer"}
    assert set(opt.state[extra.weight]) == {"step", "exp_avg", "exp_avg_sq"}


def test_singular_values_of_update_near_one() -> None:
    """The quintic leaves singular values in about [0.68, 1.14], not at 1 (full-rank input).

    Random square matrices are avoided: their smallest singular value is ~n^-1.5 of the norm,
    too small for 5 steps to lift into the band.
    """
    gen = torch.Generator().manual_seed(0)
    for shape in [(64, 32), (32, 64), (40, 120)]:
        m = torch.randn(*shape, generator=gen)
        for dtype in (torch.float32, torch.bfloat16):
            s = torch.linalg.svdvals(newton_schulz(m, dtype=dtype).float())
            assert float(s.min()) >= 0.6 and float(s.max()) <= 1.2, (shape, dtype, s)
    # The step Muon takes is lr * s * O with O in the same band.
    w = torch.randn(32, 64, generator=gen, requires_grad=True)
    opt = Muon([w], lr=0.02, weight_decay=0.0, update_scale="original", ns_dtype=torch.float32)
    w0 = w.detach().clone()
    w.grad = torch.randn(32, 64, generator=gen)
    opt.step()
    s = torch.linalg.svdvals((w0 - w.detach()) / 0.02)
    assert float(s.min()) >= 0.6 and float(s.max()) <= 1.2


def test_newton_schulz_rejects_non_matrix() -> None:
    with pytest.raises(ValueError, match="2-D"):
        newton_schulz(torch.ones(3))


# ---- decay modes ---------------------------------------------------------------------------


def test_decoupled_decay_with_zero_gradient() -> None:
    """Zero gradient gives O = 0 (norm clamped at eps) and a zero Adam step: only decay acts."""
    m = torch.randn(6, 4, requires_grad=True)
    v = torch.randn(4, requires_grad=True)
    opt = Muon([m, v], lr=0.05, weight_decay=0.3, ns_dtype=torch.float32)
    m0, v0 = m.detach().clone(), v.detach().clone()
    m.grad, v.grad = torch.zeros_like(m), torch.zeros_like(v)
    opt.step()
    torch.testing.assert_close(m.detach(), m0 * (1 - 0.05 * 0.3))
    torch.testing.assert_close(v.detach(), v0 * (1 - 0.05 * 0.3))


def test_independent_decay_follows_schedule() -> None:
    shapes = [(12, 20)]
    w = torch.randn(*shapes[0], dtype=torch.float64, requires_grad=True)
    opt = Muon([w], lr=0.02, weight_decay=0.5, decay="independent", ns_dtype=torch.float32)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (k + 1))
    ref_w, ref_b = w.detach().clone(), torch.zeros_like(w)
    for t in range(3):
        lr_t = 0.02 / (t + 1)
        g = grads_for(shapes, t)[0]
        w.grad = g
        before = w.detach().clone()
        opt.step()
        sched.step()
        ref_w, ref_b = ref_muon(ref_w, g, ref_b, lr=lr_t, mu=0.95, nesterov=True, wd=0.5,
                                scale_rule="match_rms_adamw", rate=0.5 / (t + 1))
        atol = 1e-4 * float((ref_w - before).abs().max())
        torch.testing.assert_close(w.detach(), ref_w, rtol=0, atol=atol)


def test_l2_decay_enters_the_momentum() -> None:
    shapes = [(12, 20)]
    w = torch.randn(*shapes[0], dtype=torch.float64, requires_grad=True)
    opt = Muon([w], lr=0.02, weight_decay=0.5, decay="l2", ns_dtype=torch.float32)
    ref_w, ref_b = w.detach().clone(), torch.zeros_like(w)
    for t in range(3):
        g = grads_for(shapes, t)[0]
        w.grad = g
        before = w.detach().clone()
        opt.step()
        ref_w, ref_b = ref_muon(ref_w, g + 0.5 * ref_w, ref_b, lr=0.02, mu=0.95, nesterov=True,
                                wd=0.0, scale_rule="match_rms_adamw")
        atol = 1e-4 * float((ref_w - before).abs().max())
        torch.testing.assert_close(w.detach(), ref_w, rtol=0, atol=atol)


# ---- state_dict round trip -------------------------------------------------------------------


def test_state_dict_round_trip_equals_uninterrupted() -> None:
    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 16), nn.LayerNorm(16),
                              nn.Linear(16, 10))
        groups = [
            {"params": [model[0].weight], "role": "embedding"},
            {"params": [model[1].weight], "role": "matrix", "ns_dtype": torch.bfloat16},
            {"params": [model[1].bias, model[2].weight, model[2].bias, model[3].bias]},
            {"params": [model[3].weight], "role": "output"},
        ]
        return model, Muon(groups, lr=0.02, weight_decay=0.1)

    def train(model, opt, steps):
        for t in steps:
            gen = torch.Generator().manual_seed(t)
            x, y = torch.randint(0, 10, (32,), generator=gen), torch.randint(0, 10, (32,),
                                                                             generator=gen)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
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
    assert opt.param_groups[1]["ns_dtype"] == torch.bfloat16
    train(model, opt, range(3, 6))
    for p, q in zip(model.parameters(), straight, strict=True):
        assert torch.equal(p.detach(), q)


# ---- bad hyperparameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lr": -0.1}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"nesterov": 1}, "nesterov"),
        ({"ns_steps": 0}, "ns_steps"),
        ({"ns_steps": 2.5}, "ns_steps"),
        ({"ns_coefficients": (1.0, 2.0)}, "ns_coefficients"),
        ({"eps": 0.0}, "eps"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"decay": "coupled"}, "decay"),
        ({"update_scale": "spectral"}, "update_scale"),
        ({"adamw_betas": (0.9, 1.5)}, r"adamw_betas\[1\]"),
        ({"adamw_eps": -1.0}, "adamw_eps"),
        ({"ns_dtype": torch.float16}, "ns_dtype"),
    ],
)
def test_bad_hyperparameters(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Muon([torch.zeros(2, 2, requires_grad=True)], **kwargs)


def test_bad_group_keys() -> None:
    with pytest.raises(ValueError, match="use_muon"):
        Muon([{"params": [torch.zeros(3, requires_grad=True)], "use_muon": True}])
    with pytest.raises(ValueError, match="use_muon"):
        Muon([{"params": [torch.zeros(3, 3, requires_grad=True)], "use_muon": "yes"}])


def test_ns_dtype_by_name_and_registry() -> None:
    from wdlab.optim import create

    opt = create("muon", [torch.zeros(2, 2, requires_grad=True)], ns_dtype="bfloat16")
    assert isinstance(opt, Muon) and opt.param_groups[0]["ns_dtype"] == torch.bfloat16
