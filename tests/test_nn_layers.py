"""Reparametrized layers: sigma-Reparam, Weight Standardization, muP readout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wdlab.nn import MuReadout, SigmaReparamLinear, WSConv2d

torch.set_num_threads(1)


def _with_spectrum(out_f: int, in_f: int, top: list[float], seed: int) -> torch.Tensor:
    """A matrix with known singular values (`top`, then 0.5 for the rest)."""
    gen = torch.Generator().manual_seed(seed)
    k = min(out_f, in_f)
    u, _ = torch.linalg.qr(torch.randn(out_f, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(in_f, k, generator=gen, dtype=torch.float64))
    s = torch.tensor(top + [0.5] * (k - len(top)), dtype=torch.float64)
    return u @ torch.diag(s) @ v.t()


# ----------------------------------------------------------------------------- SigmaReparamLinear


@pytest.mark.parametrize("bias", [True, False])
def test_sigma_reparam_equals_base_linear_at_init(bias):
    torch.manual_seed(0)
    base = nn.Linear(12, 7, bias=bias)
    layer = SigmaReparamLinear.from_linear(base)
    x = torch.randn(5, 12)
    torch.testing.assert_close(layer.gamma.detach(), torch.linalg.matrix_norm(base.weight, 2))
    layer.eval()
    torch.testing.assert_close(layer(x), base(x))
    layer.train()  # the first power step starts at the exact singular vectors: still equal
    torch.testing.assert_close(layer(x), base(x))


def test_sigma_reparam_fresh_layer_and_reset_after_reinit():
    torch.manual_seed(1)
    layer = SigmaReparamLinear(6, 9)
    x = torch.randn(4, 6)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    with torch.no_grad():
        layer.weight.normal_(0, 0.02)
    layer.reset_sigma()
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


def test_sigma_estimate_approaches_top_singular_value():
    layer = SigmaReparamLinear(10, 8).double()
    with torch.no_grad():  # overwrite W without reset: u, v are now stale
        layer.weight.copy_(_with_spectrum(8, 10, [3.0, 1.5], seed=2))
    x = torch.randn(2, 10, dtype=torch.float64)
    errors = []
    for _ in range(30):
        layer(x)
        errors.append(abs(float(layer.sigma().detach()) - 3.0))
    assert errors[0] > 1e-3  # one step from stale vectors is not enough...
    assert errors[-1] < 1e-9  # ...but power iteration converges (ratio (1.5/3)^2 per step)
    assert errors[-1] < errors[4] < errors[0]


def test_sigma_reparam_eval_uses_stored_vectors():
    layer = SigmaReparamLinear(10, 8).double()
    with torch.no_grad():
        layer.weight.copy_(_with_spectrum(8, 10, [2.0, 1.0], seed=3))
    u, v = layer.u.clone(), layer.v.clone()
    layer.eval()
    x = torch.randn(3, 10, dtype=torch.float64)
    y = layer(x)
    assert torch.equal(layer.u, u) and torch.equal(layer.v, v)
    sigma = u @ layer.weight.detach() @ v
    expected = F.linear(x, layer.gamma.detach() / sigma * layer.weight.detach(), layer.bias)
    torch.testing.assert_close(y, expected)


def test_sigma_reparam_weight_is_scale_invariant_with_radial_free_gradient():
    torch.manual_seed(4)
    layer = SigmaReparamLinear(6, 5, bias=False).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    y = layer(x)
    with torch.no_grad():
        layer.weight.mul_(3.0)
    torch.testing.assert_close(layer(x), y)
    layer(x).pow(2).sum().backward()
    w, g = layer.weight.detach(), layer.weight.grad
    assert abs(float((g * w).sum())) < 1e-10 * float(g.norm() * w.norm())
    assert layer.gamma.grad is not None and float(layer.gamma.grad.abs()) > 0


# ----------------------------------------------------------------------------- WSConv2d


def test_wsconv_standardizes_each_filter():
    torch.manual_seed(5)
    conv = WSConv2d(3, 4, 3, padding=1, eps=1e-8)
    x = torch.randn(2, 3, 6, 6)
    w = conv.weight.detach()
    flat = w.view(4, -1)
    std_w = (flat - flat.mean(1, keepdim=True)) / flat.std(1, unbiased=False, keepdim=True)
    expected = F.conv2d(x, std_w.view_as(w), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected, rtol=1e-4, atol=1e-5)
    y = conv(x)
    with torch.no_grad():  # scale and shift of a filter do not change its output
        conv.weight.mul_(5.0).add_(0.3)
    torch.testing.assert_close(conv(x), y, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- MuReadout


def test_mureadout_divides_by_width_mult_and_zero_init():
    torch.manual_seed(6)
    head = MuReadout(16, 5, width_mult=4.0, output_mult=2.0)
    x = torch.randn(3, 16)
    torch.testing.assert_close(head(x), F.linear(x * 0.5, head.weight, head.bias))
    zero = MuReadout(16, 5, zero_init=True)
    assert zero.weight.abs().sum() == 0 and zero.bias.abs().sum() == 0
    with pytest.raises(ValueError, match="width_mult"):
        MuReadout(16, 5, width_mult=0)


# ----------------------------------------------------------------------------- probed invariance


def _classify():
    groups = pytest.importorskip("wdlab.groups")
    if not hasattr(groups, "classify"):
        pytest.skip("wdlab.groups.classify is not available yet")
    return groups.classify


def test_groups_probe_sigma_reparam_and_ws_weights_invariant():
    classify = _classify()
    torch.manual_seed(7)
    mlp = nn.Sequential(SigmaReparamLinear(8, 16), nn.GELU(), nn.Linear(16, 3))
    inv = {p.name: p.scale_invariant for p in classify(mlp, example_input=torch.randn(5, 8))}
    assert inv["0.weight"] is True
    assert inv["2.weight"] is False
    cnn = nn.Sequential(WSConv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    inv = {p.name: p.scale_invariant for p in classify(cnn, example_input=torch.randn(2, 3, 8, 8))}
    assert inv["0.weight"] is True
    assert inv["2.weight"] is False
