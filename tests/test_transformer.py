"""The GPT: every norm x placement runs, causality, z-loss, attention stats, LayerNorm Scaling,
the Pre-LN -> Pre-RMSNorm / Pre-CRMSNorm equivalence (REFERENCE §5) and probed invariance."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wdlab.errors import ConfigError
from wdlab.nn import (
    GPT,
    CausalSelfAttention,
    CRMSNorm,
    GPTConfig,
    LayerNormScaling,
    RMSNorm,
    SigmaReparamLinear,
    convert_pre_ln,
)

torch.set_num_threads(1)

NORMS = ["layernorm", "rmsnorm", "crmsnorm", "none"]
PLACEMENTS = ["pre", "post", "peri", "mix"]


def small(**kw) -> GPTConfig:
    base = dict(vocab_size=13, context=8, n_layer=2, n_head=2, d_model=16)
    base.update(kw)
    return GPTConfig(**base)


def _randomize_vectors(model: nn.Module, seed: int = 0) -> None:
    """Give norm gains/biases and linear biases non-trivial values (init 1/0 hides mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                shift = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(shift + 0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 0),
        ("context", -1),
        ("n_layer", 1.5),
        ("n_head", 3),  # 16 is not divisible by 3: the message names d_model
        ("d_mlp", 0),
        ("norm", "batchnorm"),
        ("placement", "sandwich"),
        ("mix_ratio", 1.5),
        ("qk_norm", "yes"),
        ("z_loss", -1e-4),
        ("dropout", 1.0),
        ("attn_scale", "linear"),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError) as info:
        small(**{field: value})
    expected = "d_model" if field == "n_head" else field
    assert f"GPTConfig.{expected}" in str(info.value)
    assert info.value.field == expected
    assert isinstance(info.value, ValueError)


def test_config_lists_allowed_values_and_defaults():
    with pytest.raises(ValueError, match="layernorm, rmsnorm, crmsnorm, none"):
        small(norm="batchnorm")
    with pytest.raises(ValueError, match="ln_scaling"):
        small(norm="none", ln_scaling=True)
    assert small().d_mlp == 64
    assert small(d_mlp=24).d_mlp == 24


# ----------------------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_every_norm_and_placement_trains_and_is_causal(norm, placement):
    torch.manual_seed(0)
    model = GPT(small(norm=norm, placement=placement, n_layer=4, qk_norm=norm != "none"))
    idx = model.example_input(3)
    logits = model(idx)
    assert logits.shape == (3, 8, 13)
    loss = model.loss(logits, torch.roll(idx, -1, dims=1))
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # causality: changing token 5 leaves positions 0..4 untouched and changes position 5
    changed = idx.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 13
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=1e-6)
    assert (a[:, 5] - b[:, 5]).abs().max() > 1e-6


def test_placements_build_the_documented_blocks():
    cfg = small(n_layer=8, placement="mix", mix_ratio=0.25)
    model = GPT(cfg)
    assert [b.placement for b in model.blocks] == ["post"] * 2 + ["pre"] * 6
    assert not isinstance(model.norm_f, nn.Identity)  # last block is pre-norm
    post = GPT(small(placement="post"))
    assert isinstance(post.norm_f, nn.Identity)  # post-norm output is already normalized
    peri = GPT(small(placement="peri"))
    assert isinstance(peri.blocks[0].norm_attn_out, nn.LayerNorm)
    crms = GPT(small(norm="crmsnorm"))
    assert crms.wte.weight.shape == (13, 15) and isinstance(crms.blocks[0].norm_attn, CRMSNorm)
    assert isinstance(GPT(small(norm="none")).blocks[0].norm_attn, nn.Identity)


def test_post_placement_normalizes_the_residual_sum():
    """post: x_out = N(x + F(x)); checked by recomputing one block from its parts."""
    torch.manual_seed(1)
    model = GPT(small(placement="post", norm="rmsnorm"))
    _randomize_vectors(model)
    block = model.blocks[0]
    x = torch.randn(2, 8, 16)
    h = block.norm_attn(x + block.attn(x))
    expected = block.norm_mlp(h + block.mlp(h))
    torch.testing.assert_close(block(x), expected)
    peri = GPT(small(placement="peri")).blocks[0]
    _randomize_vectors(peri)
    h = x + peri.norm_attn_out(peri.attn(peri.norm_attn(x)))
    expected = h + peri.norm_mlp_out(peri.mlp(peri.norm_mlp(h)))
    torch.testing.assert_close(peri(x), expected)


def test_init_is_deterministic_and_nanogpt_like():
    torch.manual_seed(3)
    a = GPT(small(n_layer=8, d_model=64, n_head=4))
    torch.manual_seed(3)
    b = GPT(small(n_layer=8, d_model=64, n_head=4))
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert a.lm_head.weight is a.wte.weight
    proj = torch.cat([blk.mlp.proj.weight.flatten() for blk in a.blocks])
    fc = torch.cat([blk.mlp.fc.weight.flatten() for blk in a.blocks])
    assert abs(fc.std().item() - 0.02) < 0.001
    assert abs(proj.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert a.width == 64


def test_example_input_leaves_global_rng_alone():
    model = GPT(small())
    state = torch.get_rng_state()
    idx = model.example_input(4)
    assert torch.equal(torch.get_rng_state(), state)
    assert idx.shape == (4, 8) and idx.dtype == torch.long and int(idx.max()) < 13
    assert torch.equal(idx, model.example_input(4))
    with pytest.raises(ValueError, match="context=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


# ----------------------------------------------------------------------------- z-loss


def test_z_loss_adds_exactly_z_times_mean_log_z_squared():
    torch.manual_seed(4)
    z = 3e-2
    model = GPT(small(z_loss=z))
    plain = GPT(dataclasses.replace(model.config, z_loss=0.0))
    logits = torch.randn(2, 8, 13) * 4 - 2
    targets = torch.randint(0, 13, (2, 8))
    log_z = torch.log(torch.exp(logits.double()).sum(-1))  # independent of logsumexp
    expected = plain.loss(logits, targets).double() + z * (log_z**2).mean()
    torch.testing.assert_close(model.loss(logits, targets).double(), expected)
    ce = F.nll_loss(F.log_softmax(logits, -1).view(-1, 13), targets.view(-1))
    torch.testing.assert_close(plain.loss(logits, targets), ce)


# ----------------------------------------------------------------------------- attention stats


def _attention_inputs(model: GPT, idx: torch.Tensor) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach()))
        for m in model.modules()
        if isinstance(m, CausalSelfAttention)
    ]
    model(idx)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("attn_scale", ["sqrt", "mup"])
def test_record_stats_entropy_and_max_logit(attn_scale):
    torch.manual_seed(5)
    model = GPT(small(n_head=4, d_model=32, attn_scale=attn_scale, qk_norm=True))
    with torch.no_grad():  # sharpen attention so entropies spread across [0, log T]
        for blk in model.blocks:
            blk.attn.q_proj.weight.mul_(30)
            blk.attn.k_proj.weight.mul_(30)
    idx = model.example_input(3)
    with torch.no_grad():
        base = model(idx)
        inputs = _attention_inputs(model, idx)
        for m in model.modules():
            if isinstance(m, CausalSelfAttention):
                m.record_stats = True
        recorded = model(idx)
    torch.testing.assert_close(recorded, base, rtol=1e-5, atol=1e-5)  # same as SDPA path
    t, h, dh = 8, 4, 8
    for blk, x in zip(model.blocks, inputs, strict=True):
        attn = blk.attn
        q = attn.q_norm(attn.q_proj(x).view(3, t, h, dh).transpose(1, 2))
        k = attn.k_norm(attn.k_proj(x).view(3, t, h, dh).transpose(1, 2))
        scale = 1 / dh if attn_scale == "mup" else 1 / math.sqrt(dh)
        entropy = torch.zeros(h)
        max_logit = torch.full((h,), -math.inf)
        for b in range(3):
            for head in range(h):
                for i in range(t):
                    s = (q[b, head, i] @ k[b, head, : i + 1].T) * scale
                    a = torch.softmax(s, 0)
                    entropy[head] += -(a * torch.log(a.clamp_min(1e-30))).sum() / (3 * t)
                    max_logit[head] = max(max_logit[head], s.max())
        stats = attn.stats
        assert set(stats) == {"entropy", "max_logit"} and stats["entropy"].shape == (h,)
        assert not stats["entropy"].requires_grad
        assert (stats["entropy"] >= 0).all() and (stats["entropy"] <= math.log(t)).all()
        torch.testing.assert_close(stats["entropy"], entropy, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(stats["max_logit"], max_logit, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- LN scaling, sigma


def test_ln_scaling_multiplies_each_layers_norms_by_inverse_sqrt_layer():
    torch.manual_seed(6)
    model = GPT(small(n_layer=4, ln_scaling=True, placement="peri"))
    _randomize_vectors(model)
    x = torch.randn(2, 8, 16)
    for layer, blk in enumerate(model.blocks, start=1):
        for name in ("norm_attn", "norm_mlp", "norm_attn_out", "norm_mlp_out"):
            wrapped = getattr(blk, name)
            assert isinstance(wrapped, LayerNormScaling) and wrapped.layer_index == layer
            ln = wrapped.norm
            expected = F.layer_norm(x, (16,), ln.weight, ln.bias, 1e-5) / math.sqrt(layer)
            torch.testing.assert_close(wrapped(x), expected)
    assert isinstance(model.norm_f, nn.LayerNorm)  # the final norm is not scaled


def test_sigma_reparam_swaps_every_block_linear_and_matches_plain_model_at_init():
    torch.manual_seed(7)
    sig = GPT(small(sigma_reparam=True, bias=True))
    torch.manual_seed(7)
    plain = GPT(small(bias=True))
    linears = [m for blk in sig.blocks for m in blk.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 * 6 and all(isinstance(m, SigmaReparamLinear) for m in linears)
    idx = sig.example_input()
    torch.testing.assert_close(sig(idx), plain(idx), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- Pre-LN equivalence


@pytest.mark.parametrize("target", ["rmsnorm", "crmsnorm"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("ln_scaling", [False, True])
def test_pre_ln_converts_exactly(target, bias, ln_scaling):
    """Tolerance on max |logit difference| relative to max |logit| (logits of size 1-10):
    1e-12 in float64, 1e-5 in float32."""
    torch.manual_seed(8)
    cfg = small(n_layer=3, bias=bias, ln_scaling=ln_scaling)
    source = GPT(cfg).double()
    _randomize_vectors(source)
    with torch.no_grad():  # larger weights so the norms' inputs are far from zero-mean
        source.wte.weight.mul_(20)  # also the tied head: logits of order 1-10
        for blk in source.blocks:
            blk.mlp.proj.weight.mul_(20)
            blk.attn.o_proj.weight.mul_(20)
    idx = source.example_input(3)
    converted = convert_pre_ln(source, target)
    assert converted.config.norm == target and not converted.config.tie_embeddings
    norm_cls = CRMSNorm if target == "crmsnorm" else RMSNorm
    assert not any(isinstance(m, nn.LayerNorm) for m in converted.modules())
    assert sum(isinstance(m, norm_cls) for m in converted.modules()) == 2 * 3 + 1
    with torch.no_grad():
        expected = source(idx)
        size = float(expected.abs().max())
        assert size > 0.5
        assert (converted(idx) - expected).abs().max() <= 1e-12 * size
        # the naive swap (same weights, RMSNorm in place of LayerNorm) is NOT equivalent
        naive = GPT(dataclasses.replace(cfg, norm="rmsnorm")).double()
        naive.load_state_dict(source.state_dict(), strict=False)
        assert (naive(idx) - expected).abs().max() > 1e-3 * size
        source32 = source.float()
        single = convert_pre_ln(source32, target)
        assert (single(idx) - source32(idx)).abs().max() <= 1e-5 * size


def test_convert_pre_ln_rejects_other_models():
    with pytest.raises(ValueError, match="placement"):
        convert_pre_ln(GPT(small(placement="post")))
    with pytest.raises(ValueError, match="qk_norm"):
        convert_pre_ln(GPT(small(qk_norm=True)))
    with pytest.raises(ValueError, match="rmsnorm"):
        convert_pre_ln(GPT(small()), "layernorm")


# ----------------------------------------------------------------------------- probed invariance


def _classify():
    groups = pytest.importorskip("wdlab.groups")
    if not hasattr(groups, "classify"):
        pytest.skip("wdlab.groups.classify is not available yet")
    return groups.classify


@pytest.mark.parametrize("qk_norm", [True, False])
def test_qk_norm_makes_q_and_k_weights_scale_invariant(qk_norm):
    classify = _classify()
    torch.manual_seed(9)
    model = GPT(small(qk_norm=qk_norm))
    inv = {p.name: p.scale_invariant for p in classify(model, example_input=model.example_input())}
    for layer in range(2):
        prefix = f"blocks.{layer}.attn."
        assert inv[prefix + "q_proj.weight"] is qk_norm
        assert inv[prefix + "k_proj.weight"] is qk_norm
        assert inv[prefix + "v_proj.weight"] is False


def test_sigma_reparam_gpt_weights_are_scale_invariant():
    classify = _classify()
    torch.manual_seed(10)
    model = GPT(small(sigma_reparam=True, n_layer=1))
    inv = {p.name: p.scale_invariant for p in classify(model, example_input=model.example_input())}
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert inv[f"blocks.0.attn.{name}.weight"] is True
    assert inv["blocks.0.mlp.fc.weight"] is True and inv["blocks.0.mlp.proj.weight"] is True
    assert inv["wte.weight"] is False
