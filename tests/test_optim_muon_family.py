"""The Muon family: Polar Express coefficients, NorMuon, per-block (QKV / per-head) and batched
(expert) orthogonalization, each against a float64 formula written here."""

from __future__ import annotations

import math

import pytest
import torch

from wdlab.optim import Muon, NorMuon, create
from wdlab.optim.functional import newton_schulz, parse_split
from wdlab.optim.polar_express import optimal_quintic, polar_express, unsafe_schedule

torch.set_num_threads(1)

JORDAN = (3.4445, -4.7750, 2.0315)
# The coefficient table printed in Amsel et al. 2025 (arXiv 2505.16932, the Polar Express
# code: l = 1e-3, cushion 0.02407..., before the 1.01 safety factor), eight iterations.
PAPER = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
]


def ref_ns(m: torch.Tensor, coefs: list[tuple[float, float, float]], norm_factor: float = 1.0,
           eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz in float64 with one (a, b, c) per iteration, on the wide orientation."""
    x = m.double()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.t()
    x = x / max(float(x.norm()) * norm_factor, eps)
    for a, b, c in coefs:
        gram = x @ x.t()
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.t() if tall else x


def pe_coefs(steps: int) -> list[tuple[float, float, float]]:
    """The paper's table with its safety factor (all but the exact limit polynomial)."""
    table = PAPER[:steps] + [PAPER[-1]] * max(0, steps - len(PAPER))
    return [(a / 1.01, b / 1.01**3, c / 1.01**5) if (a, b, c) != PAPER[-1] else (a, b, c)
            for a, b, c in table]


def polar_factor(m: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(m.double(), full_matrices=False)
    return u @ vh


def scale(rows: int, cols: int) -> float:
    return 0.2 * math.sqrt(max(rows, cols))  # match_rms_adamw


# ---- Polar Express -----------------------------------------------------------------------------


def test_derived_coefficients_reproduce_the_papers_table() -> None:
    """Remez + greedy composition + cushion (polar_express.py) gives the paper's numbers."""
    derived = unsafe_schedule(8)
    for (got, _), want in zip(derived[:7], PAPER[:7], strict=True):
        for g, w in zip(got, want, strict=True):
            assert abs(g - w) <= 1e-9 * abs(w), (got, want)
    # The 8th is the limit, the degree-5 Newton-Schulz polynomial (15x - 10x^3 + 3x^5)/8.
    for g, w in zip(derived[7][0], PAPER[7], strict=True):
        assert abs(g - w) < 1e-8
    # The minimax property: p - 1 equioscillates with max error E on [l, u], and is smaller
    # there than any nearby quintic (a crude check: 200 random perturbations).
    (a, b, c), _ = optimal_quintic(0.1, 1.0)
    xs = torch.linspace(0.1, 1.0, 20001, dtype=torch.float64)
    err = ((a * xs + b * xs**3 + c * xs**5) - 1).abs().max()
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        da, db, dc = (1e-3 * torch.randn(3, generator=gen, dtype=torch.float64)).tolist()
        other = (((a + da) * xs + (b + db) * xs**3 + (c + dc) * xs**5) - 1).abs().max()
        assert other >= err
    # Safety: every fitted polynomial evaluated at x/1.01.
    safe = polar_express(8)
    for (a, b, c), (ua, ub, uc) in zip(safe[:7], PAPER[:7], strict=True):
        assert math.isclose(a, ua / 1.01, rel_tol=1e-9)
        assert math.isclose(b, ub / 1.01**3, rel_tol=1e-9)
        assert math.isclose(c, uc / 1.01**5, rel_tol=1e-9)
    assert safe[7] == pytest.approx(PAPER[7], abs=1e-8)


def _matrices() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(96, 96, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(192, 96, generator=gen, dtype=torch.float64))
    ill = (u * torch.logspace(0, -3, 96, dtype=torch.float64)) @ v.T  # condition number 1e3
    return {
        "random 96x192": torch.randn(96, 192, generator=gen),
        "random 160x64": torch.randn(160, 64, generator=gen),
        "random square 96": torch.randn(96, 96, generator=gen),
        "ill-conditioned 1e3": ill.float(),
    }


@pytest.mark.parametrize("steps", [5, 8])
def test_polar_express_orthogonalizes_better_at_the_same_steps(steps: int) -> None:
    """Distance to the polar factor U V^T (float32 iteration): Polar Express is closer than
    Jordan's quintic on every matrix; on full-rank rectangular and condition-1e3 ones its
    singular values are closer to 1 too (Jordan's stall in [0.68, 1.32] by design)."""
    for name, m in _matrices().items():
        target = polar_factor(m)
        errors = {}
        sv = {}
        for coefs in ("jordan", "polar_express"):
            o = newton_schulz(m, steps, coefs).double()
            errors[coefs] = float((o - target).norm() / target.norm())
            sv[coefs] = float((torch.linalg.svdvals(o) - 1).abs().max())
        assert errors["polar_express"] < errors["jordan"], (name, steps, errors)
        if "square" not in name:
            assert sv["polar_express"] < sv["jordan"], (name, steps, sv)
        if steps == 8 and "square" not in name:
            assert sv["polar_express"] < 2e-2 and sv["jordan"] > 0.25, (name, sv)


def test_polar_express_matches_the_formula_with_the_papers_table() -> None:
    """newton_schulz("polar_express") = the float64 iteration with the table's coefficients,
    input divided by 1.01*||X||_F; and 10 steps repeat the limit polynomial."""
    gen = torch.Generator().manual_seed(1)
    for shape, steps in (((24, 40), 5), ((40, 24), 10)):
        m = torch.randn(*shape, generator=gen, dtype=torch.float64)
        got = newton_schulz(m, steps, "polar_express", dtype=torch.float64)
        torch.testing.assert_close(got, ref_ns(m, pe_coefs(steps), 1.01), rtol=0, atol=1e-10)


def test_muon_with_polar_express_and_explicit_lists() -> None:
    """The optimizer option: Muon(ns_coefficients="polar_express") steps with the table; a
    per-iteration list given by hand is used as given (its last entry repeated)."""
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(16, 24, generator=gen, dtype=torch.float64)
    g = torch.randn(16, 24, generator=gen, dtype=torch.float64)
    own = [(3.0, -3.2, 1.2), (2.0, -1.5, 0.5)]
    for coefs, ref in (("polar_express", ref_ns(g, pe_coefs(5), 1.01)),
                       (own, ref_ns(g, own + [own[-1]] * 3))):
        w = w0.clone().requires_grad_()
        opt = Muon([w], lr=0.02, weight_decay=0.0, ns_coefficients=coefs,
                   ns_dtype=torch.float32, nesterov=False)
        w.grad = g.clone()
        opt.step()
        # first step: buf = 0.05 g, whose direction is g's (NS is scale-free)
        expected = w0 - 0.02 * scale(16, 24) * ref
        torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="ns_coefficients"):
        Muon([torch.zeros(2, 2, requires_grad=True)], ns_coefficients="polar")
    with pytest.raises(ValueError, match="ns_coefficients"):
        Muon([torch.zeros(2, 2, requires_grad=True)], ns_coefficients=[(1.0, 2.0, 3.0), (1.0,)])


# ---- NorMuon -----------------------------------------------------------------------------------


def ref_normuon(w, g, buf, v, *, lr, mu, beta2, eps, wd):
    """One NorMuon step in float64 (Li et al. 2025, Algorithm 1, with the update rescaled to
    Muon's Frobenius norm as in its reference code)."""
    buf = mu * buf + (1 - mu) * g
    u = (1 - mu) * g + mu * buf
    o = ref_ns(u.reshape(u.shape[0], -1), [JORDAN] * 5).reshape(u.shape)
    v = beta2 * v + (1 - beta2) * (o**2).reshape(o.shape[0], -1).mean(dim=1)
    shape = (-1,) + (1,) * (o.ndim - 1)
    o_hat = o / (v.sqrt() + eps).reshape(shape)
    o_hat = o_hat * (o.norm() / o_hat.norm())
    rows, cols = o.shape[0], o[0].numel()
    return w * (1 - lr * wd) - lr * scale(rows, cols) * o_hat, buf, v


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_normuon_matches_the_formula(impl: str) -> None:
    shapes = [(12, 20), (20, 12), (6, 2, 3, 3)]
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True)
              for s in shapes]
    opt = NorMuon(params, lr=0.02, weight_decay=0.1, normuon_beta2=0.9,
                  ns_dtype=torch.float32, impl=impl)
    refs = [(p.detach().clone(), torch.zeros_like(p), torch.zeros(p.shape[0], dtype=p.dtype))
            for p in params]
    for _ in range(4):
        grads = [torch.randn(*s, generator=gen, dtype=torch.float64) for s in shapes]
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
        refs = [ref_normuon(w, g, b, v, lr=0.02, mu=0.95, beta2=0.9, eps=1e-8, wd=0.1)
                for (w, b, v), g in zip(refs, grads, strict=True)]
        for p, (w, _, v), w0 in zip(params, refs, before, strict=True):
            step = float((w - w0).abs().max())
            torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-4 * step)
            torch.testing.assert_close(opt.state[p]["normuon_v"], v, rtol=1e-4, atol=0)
    # The normalization did something: rows of one update have unequal norms under Muon.
    assert opt.param_groups[0]["normuon"] and isinstance(create("normuon", params), NorMuon)


def test_normuon_state_survives_a_state_dict_round_trip() -> None:
    w = torch.randn(8, 12, requires_grad=True)
    opt = Muon([w], lr=0.02, normuon=True, ns_dtype=torch.float32)
    w.grad = torch.randn(8, 12)
    opt.step()
    again = Muon([w], lr=0.02, normuon=True, ns_dtype=torch.float32)
    again.load_state_dict(opt.state_dict())
    assert torch.equal(again.state[w]["normuon_v"], opt.state[w]["normuon_v"])
    assert again.state[w]["normuon_v"].shape == (8,)


# ---- splits: fused QKV, per head, experts ------------------------------------------------------


def first_step(p0: torch.Tensor, g: torch.Tensor, **kw) -> torch.Tensor:
    """The weight after one Muon step from p0 with gradient g (nesterov off, no decay)."""
    split = kw.pop("split", None)
    as_attr = kw.pop("as_attr", False)
    w = p0.clone().requires_grad_()
    group: dict = {"params": [w]}
    if as_attr:
        w.muon_split = split
    elif split is not None:
        group["muon_split"] = split
    opt = Muon([group], lr=0.02, weight_decay=0.0, nesterov=False, ns_dtype=torch.float32, **kw)
    w.grad = g.clone()
    opt.step()
    return w.detach()


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_fused_qkv_and_per_head_blocks_are_orthogonalized_separately(impl: str) -> None:
    """rows:3 on a fused [3d, d] QKV weight = Q, K, V each orthogonalized and scaled as a
    (d, d) matrix; cols:H on W_o = each head's (d, d_head) column block; uneven row sizes
    (grouped-query attention's Q | K | V) likewise."""
    gen = torch.Generator().manual_seed(4)
    d, heads = 16, 4
    cases = [
        ((3 * d, d), "rows:3", 0, [d, d, d]),
        ((d, d), ("cols", heads), 1, [d // heads] * heads),
        ((d + 8, d), "rows:16,4,4", 0, [16, 4, 4]),
    ]
    for shape, split, dim, sizes in cases:
        p0 = torch.randn(*shape, generator=gen, dtype=torch.float64)
        g = torch.randn(*shape, generator=gen, dtype=torch.float64)
        got = first_step(p0, g, split=split, impl=impl)
        blocks = g.split(sizes, dim=dim)
        update = torch.cat([scale(*b.shape) * ref_ns(b, [JORDAN] * 5) for b in blocks], dim=dim)
        torch.testing.assert_close(got, p0 - 0.02 * update, rtol=0, atol=1e-6)
        # and it is not what the whole-matrix update would have been
        assert (first_step(p0, g, impl=impl) - got).abs().max() > 1e-3
    # the parameter attribute works like the group key
    p0, g = torch.randn(3 * d, d, dtype=torch.float64), torch.randn(3 * d, d, dtype=torch.float64)
    torch.testing.assert_close(first_step(p0, g, split="rows:3", as_attr=True),
                               first_step(p0, g, split="rows:3"), rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["reference", "foreach"])
@pytest.mark.parametrize("normuon", [False, True])
def test_expert_weights_are_orthogonalized_per_expert(impl: str, normuon: bool) -> None:
    """An [E, m, n] expert tensor with split "batch": each expert's matrix on its own (and
    NorMuon's rows per expert), against the same step on E separate (m, n) params."""
    gen = torch.Generator().manual_seed(5)
    experts, m, n = 3, 8, 12
    p0 = torch.randn(experts, m, n, generator=gen, dtype=torch.float64)
    grads = [torch.randn(experts, m, n, generator=gen, dtype=torch.float64) for _ in range(3)]
    stacked = p0.clone().requires_grad_()
    opt = Muon([{"params": [stacked], "muon_split": "batch"}], lr=0.02, weight_decay=0.1,
               ns_dtype=torch.float32, normuon=normuon, impl=impl)
    singles = [p0[e].clone().requires_grad_() for e in range(experts)]
    ref = Muon(singles, lr=0.02, weight_decay=0.1, ns_dtype=torch.float32, normuon=normuon,
               impl="reference")
    for g in grads:
        stacked.grad = g.clone()
        for e, s in enumerate(singles):
            s.grad = g[e].clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(stacked.detach(), torch.stack([s.detach() for s in singles]),
                               rtol=0, atol=1e-9)
    if normuon:
        assert opt.state[stacked]["normuon_v"].shape == (experts, m)
    # Without the split the same tensor is flattened to (E, m*n) like a conv weight.
    flat = first_step(p0, grads[0])
    assert (flat - first_step(p0, grads[0], split="batch")).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("split", "shape"),
    [("rows:5", (12, 4)), ("cols:0", (12, 4)), ("rows:4,4", (12, 4)), ("batch", (12, 4)),
     ("diag:2", (12, 4)), (("rows", True), (12, 4)), ("rows:a", (12, 4))],
)
def test_bad_splits_name_the_field(split, shape) -> None:
    with pytest.raises(ValueError, match="muon_split"):
        parse_split(split, shape)
    with pytest.raises(ValueError, match="muon_split"):
        Muon([{"params": [torch.zeros(*shape, requires_grad=True)], "muon_split": split}])


def test_gpt_marks_its_heads_and_the_registry_selects_the_variants() -> None:
    """GPTConfig(muon_per_head=True) (recipe: model.muon_per_head=true) gives W_q/W_k/W_v
    "rows:n_head" and W_o "cols:n_head", which Muon follows; "muon-pe" and "normuon" are
    registry names (for wdlab bench) with their options on."""
    from wdlab.nn.transformer import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=11, context=8, n_layer=1, n_head=4, d_model=16,
                          muon_per_head=True))
    attn = model.blocks[0].attn
    opt = Muon([{"params": [attn.q_proj.weight, attn.o_proj.weight], "role": "matrix"}])
    group = opt.param_groups[0]
    assert Muon.split_of(attn.q_proj.weight, group) == parse_split("rows:4,4,4,4", (16, 16))
    assert Muon.split_of(attn.o_proj.weight, group).kind == "cols"
    q0 = attn.q_proj.weight.detach().double()
    g = torch.randn(16, 16, dtype=torch.float64)
    manual = torch.cat([scale(4, 16) * ref_ns(b, [JORDAN] * 5) for b in g.split(4)])
    w = q0.clone().requires_grad_()
    w.muon_split = attn.q_proj.weight.muon_split
    step = Muon([w], lr=0.02, weight_decay=0.0, nesterov=False, ns_dtype=torch.float32)
    w.grad = g
    step.step()
    torch.testing.assert_close(w.detach(), q0 - 0.02 * manual, rtol=0, atol=1e-6)
    pe = create("muon-pe", [torch.zeros(2, 2, requires_grad=True)])
    assert pe.param_groups[0]["ns_coefficients"] == "polar_express"
    explicit = create("muon-pe", [torch.zeros(2, 2, requires_grad=True)],
                      ns_coefficients="jordan")
    assert explicit.param_groups[0]["ns_coefficients"] == "jordan"
    assert create("normuon", [torch.zeros(2, 2, requires_grad=True)]).param_groups[0]["normuon"]


def test_sweep_axes_and_recipe_keys_select_the_family_options() -> None:
    """A sweep over optimizer.name x optimizer.ns_coefficients x model.qk_clip on charlm:
    every trial's config builds the optimizer and model it names (what a worker trains)."""
    from wdlab import workloads
    from wdlab.config import build_config
    from wdlab.factory import create_optimizer
    from wdlab.sweep.spec import SweepSpec, trial_config

    base = build_config("charlm", tiny=True,
                        assignments=["model.muon_per_head=true"]).to_dict()
    spec = SweepSpec.create(workload="charlm", tiny=True, axes={
        "optimizer.name": ["muon", "normuon", "muon-pe"],
        "optimizer.ns_coefficients": ["jordan", "polar_express"],
        "model.qk_clip": [0.0, 50.0],
    })
    trials = spec.trials()
    assert len(trials) == 12
    seen = set()
    for i, params in enumerate(trials):
        config = trial_config(base, {k: v for k, v in params.items() if k != "seed"}, f"t{i}")
        workload = workloads.from_config(config)
        model = workload.build_model()
        opt = create_optimizer(model, config.optimizer.name, lr=config.optimizer.lr,
                               example_input=workload.example_input(),
                               **config.optimizer.hyperparameters())
        group = next(g for g in opt.param_groups if g.get("role") == "matrix")
        assert group["ns_coefficients"] == params["optimizer.ns_coefficients"]
        assert group["normuon"] == (params["optimizer.name"] == "normuon")
        attn = model.blocks[0].attn
        assert attn.qk_clip == params["model.qk_clip"]
        assert attn.q_proj.weight.muon_split == f"rows:{model.config.n_head}"
        seen.add((type(opt).__name__, group["ns_coefficients"], attn.qk_clip))
    assert len(seen) == 12
