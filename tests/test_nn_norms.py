"""Normalization layers: each against its formula computed here, and the scale invariance
they give the weights feeding them (probed by wdlab.groups.classify)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wdlab.nn import (
    BatchChannelNorm,
    CRMSNorm,
    EvoNormB0,
    EvoNormS0,
    LayerNormScaling,
    PowerNorm,
    RMSNorm,
    crms_compress,
    crms_decompress,
    selu_mlp,
)

torch.set_num_threads(1)


def _randomize(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial affine parameters (init values 1/0 would hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


# ----------------------------------------------------------------------------- RMSNorm / CRMSNorm


def test_rmsnorm_matches_formula_with_bias():
    torch.manual_seed(0)
    norm = RMSNorm(6, eps=1e-5, bias=True)
    _randomize(norm)
    x = torch.randn(3, 4, 6) * 3 + 1
    rms = torch.sqrt((x**2).sum(-1, keepdim=True) / 6 + 1e-5)
    torch.testing.assert_close(norm(x), x / rms * norm.weight + norm.bias)


def test_crms_compress_decompress_round_trip():
    x = torch.randn(5, 7, dtype=torch.float64)
    z = crms_compress(x)
    assert z.shape == (5, 6)
    torch.testing.assert_close(crms_decompress(z), x - x.mean(-1, keepdim=True))
    torch.testing.assert_close(crms_compress(crms_decompress(z)), z)


def test_crmsnorm_equals_layernorm_on_the_stored_coordinates():
    x = torch.randn(4, 9, dtype=torch.float64) * 2 + 0.7
    norm = CRMSNorm(9, elementwise_affine=False).double()
    expected = F.layer_norm(x, (9,), eps=1e-5)
    out = norm(crms_compress(x))
    torch.testing.assert_close(out, expected[:, :-1], rtol=0, atol=1e-12)
    torch.testing.assert_close(crms_decompress(out), expected, rtol=0, atol=1e-12)


def test_crmsnorm_rejects_uncompressed_width():
    with pytest.raises(ValueError, match="d-1=8"):
        CRMSNorm(9)(torch.randn(2, 9))
    with pytest.raises(ValueError, match="d "):
        CRMSNorm(1)


# ----------------------------------------------------------------------------- PowerNorm


def _quad_mean(x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean of x^2 for (N, C, H, W) inputs, computed by explicit loops over C."""
    return torch.stack([(x[:, c] ** 2).mean() for c in range(x.shape[1])])


def _expand(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1)


def test_powernorm_train_uses_batch_quadratic_mean_during_warmup():
    torch.manual_seed(0)
    pn = PowerNorm(3, warmup_steps=2, eps=1e-5)
    _randomize(pn)
    x1, x2 = torch.randn(4, 3, 5, 5) * 2, torch.randn(4, 3, 5, 5) + 1
    for i, x in enumerate((x1, x2)):
        y = pn(x)
        psi = torch.sqrt(_quad_mean(x) + 1e-5)
        expected = _expand(pn.weight) * x / _expand(psi) + _expand(pn.bias)
        torch.testing.assert_close(y, expected)
        assert int(pn.num_steps) == i + 1
    # warmup: the running quadratic mean is the plain average of the batch ones
    torch.testing.assert_close(pn.running_phi, (_quad_mean(x1) + _quad_mean(x2)) / 2)


def test_powernorm_after_warmup_uses_running_statistic_then_updates_it():
    torch.manual_seed(1)
    pn = PowerNorm(3, warmup_steps=1, alpha_fwd=0.8)
    _randomize(pn)
    x1, x2 = torch.randn(4, 3, 2, 2) * 3, torch.randn(4, 3, 2, 2)
    pn(x1)
    phi_prev = pn.running_phi.clone()
    y = pn(x2)  # step 2 > warmup: psi_{t-1}, not the batch statistic
    expected = _expand(pn.weight) * x2 / _expand(torch.sqrt(phi_prev + 1e-5)) + _expand(pn.bias)
    torch.testing.assert_close(y, expected)
    batch = _expand(pn.weight) * x2 / _expand(torch.sqrt(_quad_mean(x2) + 1e-5))
    assert not torch.allclose(y, batch + _expand(pn.bias))
    torch.testing.assert_close(pn.running_phi, 0.8 * phi_prev + 0.2 * _quad_mean(x2))


def test_powernorm_eval_uses_running_and_leaves_buffers_alone():
    torch.manual_seed(2)
    pn = PowerNorm(3, warmup_steps=5)
    _randomize(pn)
    pn(torch.randn(8, 3, 4, 4) * 2)
    x = torch.randn(8, 3, 4, 4) * 0.5 + 1
    buffers = {k: v.clone() for k, v in pn.named_buffers()}
    pn.eval()
    y = pn(x)
    running = _expand(torch.sqrt(buffers["running_phi"] + 1e-5))
    torch.testing.assert_close(y, _expand(pn.weight) * x / running + _expand(pn.bias))
    for k, v in pn.named_buffers():
        assert torch.equal(v, buffers[k]), k
    pn.train()
    assert not torch.allclose(pn(x), y)  # train normalizes by this batch instead


def test_powernorm_backward_is_the_approximate_one():
    """dL/dx = (g - nu_{t-1} x_hat) / psi with nu updated as in Shen et al. Alg. 2; with nu=0
    the gradient is just g/psi, and unlike the exact gradient it is not orthogonal to x."""
    torch.manual_seed(3)
    alpha = 0.7
    pn = PowerNorm(3, warmup_steps=10, alpha_bkw=alpha, eps=1e-12).double()
    _randomize(pn)
    nu = torch.zeros(3, dtype=torch.float64)
    for step in range(2):
        x = (torch.randn(6, 3, 2, 2, dtype=torch.float64) * 2).requires_grad_(True)
        dy = torch.randn(6, 3, 2, 2, dtype=torch.float64)
        (pn(x) * dy).sum().backward()
        psi = _expand(torch.sqrt(_quad_mean(x.detach()) + pn.eps))
        x_hat = x.detach() / psi
        g = _expand(pn.weight.detach()) * dy  # dL/dx_hat
        expected = (g - _expand(nu) * x_hat) / psi
        torch.testing.assert_close(x.grad, expected)
        lam = torch.stack([(x_hat[:, c] * g[:, c]).mean() for c in range(3)])
        gam = _quad_mean(x_hat)
        nu = nu * (1 - (1 - alpha) * gam) + (1 - alpha) * lam
        torch.testing.assert_close(pn.nu, nu)
        if step == 0:
            # the exact gradient of x / psi_B(x) is orthogonal to x per channel; this is not
            exact_x = x.detach().clone().requires_grad_(True)
            psi_b = torch.sqrt((exact_x**2).mean(dim=(0, 2, 3), keepdim=True) + pn.eps)
            (_expand(pn.weight.detach()) * exact_x / psi_b * dy).sum().backward()
            radial_exact = (exact_x.grad * x.detach()).sum(dim=(0, 2, 3))
            radial_approx = (x.grad * x.detach()).sum(dim=(0, 2, 3))
            assert radial_exact.abs().max() < 1e-8
            assert radial_approx.abs().min() > 1e-3


def test_powernorm_channels_last_for_transformer_activations():
    pn = PowerNorm(5, channel_dim=-1, warmup_steps=1)
    x = torch.randn(2, 7, 5)
    y = pn(x)
    psi = torch.sqrt((x**2).mean(dim=(0, 1)) + 1e-5)
    torch.testing.assert_close(y, x / psi)
    with pytest.raises(ValueError, match="channel_dim=-1"):
        pn(torch.randn(2, 5, 7))


def test_powernorm_rejects_bad_arguments():
    with pytest.raises(ValueError, match="alpha_fwd"):
        PowerNorm(3, alpha_fwd=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        PowerNorm(3, warmup_steps=-1)


# ----------------------------------------------------------------------------- BCN, EvoNorm


def test_batch_channel_norm_is_batchnorm_then_group_channel_norm():
    torch.manual_seed(4)
    bcn = BatchChannelNorm(6, num_groups=3)
    _randomize(bcn)
    x = torch.randn(4, 6, 5, 5) * 2 + 1
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    b = (x - mean) / torch.sqrt(var + 1e-5) * _expand(bcn.bn.weight) + _expand(bcn.bn.bias)
    g = b.view(4, 3, -1)
    g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-5)
    expected = g.view_as(x) * _expand(bcn.weight) + _expand(bcn.bias)
    torch.testing.assert_close(bcn(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="num_groups"):
        BatchChannelNorm(6, num_groups=4)


def test_evonorm_b0_formula_train_and_eval():
    torch.manual_seed(5)
    evo = EvoNormB0(4, momentum=0.5)
    _randomize(evo)
    x = torch.randn(3, 4, 5, 5) * 2
    batch_var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    inst_std = torch.sqrt(x.var(dim=(2, 3), unbiased=False, keepdim=True) + 1e-5)
    den = torch.maximum(torch.sqrt(batch_var + 1e-5), _expand(evo.v) * x + inst_std)
    torch.testing.assert_close(evo(x), x / den * _expand(evo.weight) + _expand(evo.bias))
    n = 3 * 5 * 5
    running = 0.5 * 1.0 + 0.5 * batch_var.flatten() * n / (n - 1)
    torch.testing.assert_close(evo.running_var, running)
    evo.eval()
    den = torch.maximum(torch.sqrt(_expand(running) + 1e-5), _expand(evo.v) * x + inst_std)
    torch.testing.assert_close(evo(x), x / den * _expand(evo.weight) + _expand(evo.bias))


def test_evonorm_s0_formula():
    torch.manual_seed(6)
    evo = EvoNormS0(6, groups=2)
    _randomize(evo)
    x = torch.randn(3, 6, 4, 4)
    g = x.view(3, 2, -1)
    std = torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-5).expand_as(g).reshape(x.shape)
    expected = x * torch.sigmoid(_expand(evo.v) * x) / std * _expand(evo.weight)
    torch.testing.assert_close(evo(x), expected + _expand(evo.bias))


# ----------------------------------------------------------------------------- LN scaling, SELU


@pytest.mark.parametrize("layer", [1, 2, 5, 12])
def test_layernorm_scaling_factor(layer):
    ln = nn.LayerNorm(8)
    _randomize(ln)
    wrapped = LayerNormScaling(ln, layer)
    x = torch.randn(3, 8)
    torch.testing.assert_close(wrapped(x), ln(x) / math.sqrt(layer))
    with pytest.raises(ValueError, match="layer_index"):
        LayerNormScaling(ln, 0)


def test_selu_mlp_is_self_normalizing():
    """Hidden activations stay near mean 0, variance 1 through depth (Klambauer et al.)."""
    torch.manual_seed(7)
    net = selu_mlp(64, 256, 10, depth=8, dropout=0.05)
    assert sum(isinstance(m, nn.AlphaDropout) for m in net) == 8
    first = net[0]
    assert abs(first.weight.std().item() - 1 / math.sqrt(64)) < 0.01
    net.eval()
    h = torch.randn(2048, 64)
    stats = []
    for m in net[:-1]:
        h = m(h)
        if isinstance(m, nn.SELU):
            stats.append((h.mean().item(), h.var().item()))
    assert len(stats) == 8
    for mean, var in stats:
        assert abs(mean) < 0.15 and abs(var - 1) < 0.2, stats


# ----------------------------------------------------------------------------- scale invariance


def _classify():
    groups = pytest.importorskip("wdlab.groups")
    if not hasattr(groups, "classify"):
        pytest.skip("wdlab.groups.classify is not available yet")
    return groups.classify


def _invariance(model: nn.Module, example: torch.Tensor) -> dict[str, bool]:
    return {p.name: p.scale_invariant for p in _classify()(model, example_input=example)}


@pytest.mark.parametrize(
    "norm", [lambda: RMSNorm(16), lambda: nn.LayerNorm(16)], ids=["rmsnorm", "layernorm"]
)
def test_linear_feeding_norm_is_scale_invariant(norm):
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(8, 16, bias=False), norm(), nn.Linear(16, 4, bias=False))
    inv = _invariance(model, torch.randn(6, 8))
    assert inv["0.weight"] is True
    assert inv["2.weight"] is False


@pytest.mark.parametrize(
    "norm",
    [lambda: BatchChannelNorm(8, num_groups=2), lambda: PowerNorm(8)],
    ids=["bcn", "powernorm"],
)
def test_conv_feeding_batch_norms_is_scale_invariant(norm):
    torch.manual_seed(9)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False), norm(), nn.ReLU(), nn.Conv2d(8, 4, 1, bias=False)
    )
    inv = _invariance(model, torch.randn(4, 3, 8, 8))
    assert inv["0.weight"] is True
    assert inv["3.weight"] is False
