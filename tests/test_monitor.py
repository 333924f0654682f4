"""Probes against hand computations, and the Monitor with plain torch optimizers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wdlab.monitor import (
    Monitor,
    angular_update,
    attention_entropy,
    effective_lr,
    expected_calibration_error,
    logit_stats,
    loss_by_frequency_bucket,
    rankme,
    update_split,
)
from wdlab.monitor.probes import power_iteration, row_angular_update


def test_angular_update_of_a_known_rotation():
    theta = 0.013
    w0 = torch.tensor([3.0, 0.0, 0.0])
    w1 = 2.5 * torch.tensor([math.cos(theta), math.sin(theta), 0.0])  # rotate and shrink
    assert float(angular_update(w0, w1)) == pytest.approx(theta, rel=1e-5)


def test_update_split_radial_and_tangential():
    w = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    delta = torch.tensor([[-0.5, 0.3], [0.4, 0.0]])
    radial, tangential = update_split(w, delta)
    assert float(radial) == pytest.approx(-0.5)  # along ŵ = e1
    assert float(tangential) == pytest.approx(math.hypot(0.3, 0.4))


def test_row_angular_update_is_mean_over_rows():
    w0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    w1 = torch.tensor([[math.cos(0.1), math.sin(0.1)], [0.0, 2.0]])
    assert float(row_angular_update(w0, w1)) == pytest.approx(0.05, rel=1e-5)


def test_effective_lr():
    w = torch.tensor([3.0, 4.0])
    assert float(effective_lr(0.5, w)) == pytest.approx(0.5 / 25.0)


def test_power_iteration_converges_to_top_singular_value():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(20, 12, generator=gen)
    v = None
    for _ in range(200):
        sigma, v = power_iteration(m, v, gen)
    assert float(sigma) == pytest.approx(float(torch.linalg.svdvals(m)[0]), rel=1e-4)


def test_rankme_hand_computed():
    m = torch.diag(torch.tensor([3.0, 1.0, 0.0]))
    p = [0.75 + 1e-7, 0.25 + 1e-7, 1e-7]
    expected = math.exp(-sum(x * math.log(x) for x in p))
    assert rankme(m) == pytest.approx(expected, rel=1e-6)
    assert rankme(torch.eye(4)) == pytest.approx(4.0, rel=1e-5)


def test_ece_hand_computed():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 1, 1])
    # confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.55 (wrong), each alone in a bin
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(0 - 0.55)) / 4
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    # two in one bin: |mean acc - mean conf| weighted by 2/2
    probs2 = torch.tensor([[0.61, 0.39], [0.39, 0.61]])
    assert expected_calibration_error(probs2, torch.tensor([0, 0]), bins=5) == pytest.approx(
        abs(0.5 - 0.61)
    )
    # logits give the same as their softmax
    logits = torch.log(probs)
    assert expected_calibration_error(logits, labels) == pytest.approx(expected)


def test_attention_entropy_known_distribution():
    # head 0 uniform over 4 keys (entropy log 4), head 1 one-hot (entropy 0)
    w = torch.zeros(2, 2, 3, 4)
    w[:, 0] = 0.25
    w[:, 1, :, 2] = 1.0
    ent = attention_entropy(w)
    assert ent.tolist() == pytest.approx([math.log(4), 0.0], abs=1e-6)


def test_logit_stats_log_partition():
    logits = torch.tensor([[0.0, 0.0], [1.0, 3.0]])
    mean, mx, top = logit_stats(logits)
    lz = [math.log(2), math.log(math.e + math.e**3)]
    assert float(mean) == pytest.approx(sum(lz) / 2)
    assert float(mx) == pytest.approx(lz[1])
    assert float(top) == pytest.approx(3.0)


def test_loss_by_frequency_bucket():
    logits = torch.zeros(4, 3)
    logits[0, 0] = 2.0
    targets = torch.tensor([0, 0, 1, 2])
    counts = [80, 15, 5]
    out = loss_by_frequency_bucket(logits, targets, counts, buckets=[50, 10])
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert out == pytest.approx(
        {"freq0": (ce0 + math.log(3)) / 2, "freq1": math.log(3), "freq2": math.log(3)}
    )
    # equal token-mass split: token 0 holds 80% of the mass -> bucket 0; tokens 1, 2 -> bucket 1
    assert set(loss_by_frequency_bucket(logits, targets, counts, buckets=2)) == {"freq0", "freq1"}


def _loop(model, opt, monitor, steps, make_loss):
    for step in range(1, steps + 1):
        monitor.before_forward(step)
        loss = make_loss(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(step)


def test_monitor_with_plain_param_groups_matches_hand_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # no wdlab keys
    logged: list[tuple[int, dict]] = []
    mon = Monitor(model, opt, every=3, sink=lambda s, m: logged.append((s, m)))
    x = torch.randn(16, 6)
    before: dict[str, torch.Tensor] = {}
    for step in range(1, 7):
        mon.before_forward(step)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        out = model(x)
        loss = out.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(step)
    assert [s for s, _ in logged] == [3, 6]
    m = mon.latest
    w0, w1 = before["0.weight"], model[0].weight.detach()
    assert m["mon/angle/0.weight"] == pytest.approx(float(angular_update(w0, w1)), rel=1e-5)
    assert m["mon/upd_norm/0.weight"] == pytest.approx(float((w1 - w0).norm()), rel=1e-5)
    assert m["mon/w_norm/2.bias"] == pytest.approx(float(model[2].bias.detach().norm()), rel=1e-6)
    # fallback roles: ndim >= 2 is a matrix; nothing is scale-invariant, so no predictions
    angles = [m[f"mon/angle/{n}.weight"] for n in ("0", "2")]
    assert m["mon/angle/role:matrix"] == pytest.approx(sum(angles) / 2)
    assert "mon/angle/role:vector" in m
    assert not any(k.startswith(("mon/angle_pred", "mon/eff_lr")) for k in m)
    # output logits of the measured forward
    assert m["mon/logz_mean"] == pytest.approx(
        float(torch.logsumexp(out.detach(), -1).mean()), rel=1e-5
    )


def test_monitor_predictions_for_groups_marked_scale_invariant():
    lin = nn.Linear(16, 32, bias=False)
    model = nn.Sequential(lin, nn.LayerNorm(32, elementwise_affine=False))
    opt = torch.optim.AdamW(
        [{"params": [lin.weight], "role": "matrix", "scale_invariant": True}],
        lr=0.01,
        weight_decay=0.1,
    )
    mon = Monitor(model, opt, every=2, sink=None)
    _loop(model, opt, mon, 4, lambda mdl: mdl(torch.randn(8, 16)).sum(0)[0])
    m = mon.latest
    w = lin.weight.detach()
    assert m["mon/eff_lr/0.weight"] == pytest.approx(0.01 / float(w.norm()) ** 2, rel=1e-5)
    pred = math.sqrt(2 * 0.01 * 0.1 * 0.1 / 1.9)
    assert m["mon/angle_pred/0.weight"] == pytest.approx(pred, rel=0.01)
    assert m["mon/angle_ratio/0.weight"] == pytest.approx(
        m["mon/angle/0.weight"] / m["mon/angle_pred/0.weight"], rel=1e-5
    )
    assert m["mon/norm_pred/0.weight"] == pytest.approx(math.sqrt(0.01 * 512 / 0.2), rel=0.01)
    assert m["mon/angle/role:si"] == pytest.approx(m["mon/angle/0.weight"])


class _FakeAttention(nn.Module):
    """Stands in for wdlab's CausalSelfAttention: records stats when record_stats is set."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.record_stats = False
        self.stats = None
        self.forwards_recorded = 0

    def forward(self, x):
        if self.record_stats:
            self.forwards_recorded += 1
            self.stats = {
                "entropy": torch.tensor([1.0, 2.0]),
                "max_logit": torch.tensor([3.0, 5.0]),
            }
        return self.lin(x)


def test_attention_stats_only_on_measured_steps_and_full_level_per_head():
    model = nn.Sequential(_FakeAttention(), _FakeAttention())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = Monitor(model, opt, every=4, level="full", output_logits=False)
    _loop(model, opt, mon, 8, lambda mdl: mdl(torch.randn(3, 4)).sum())
    assert model[0].forwards_recorded == 2  # steps 4 and 8 only
    m = mon.latest
    assert m["mon/attn_entropy/layer:1"] == pytest.approx(1.5)
    assert m["mon/attn_max_logit/layer:0"] == pytest.approx(5.0)
    assert m["mon/attn_max_logit/layer:0/head:1"] == pytest.approx(5.0)
    assert model[0].record_stats is False


def test_multihead_attention_entropy_via_hook():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    opt = torch.optim.SGD(mha.parameters(), lr=0.01)
    mon = Monitor(mha, opt, every=1, output_logits=False)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        _, ref = mha(x, x, x, need_weights=True, average_attn_weights=False)
    expected = attention_entropy(ref).mean()
    mon.before_forward(1)
    out, weights = mha(x, x, x, need_weights=False)
    assert weights is None  # the caller's choice is kept
    out.sum().backward()
    opt.step()
    m = mon.step(1)
    assert m["mon/attn_entropy/layer:0"] == pytest.approx(float(expected), rel=1e-5)
    assert 0.0 < m["mon/attn_entropy/layer:0"] <= math.log(5)


def test_step_without_argument_follows_before_forward():
    model = nn.Linear(3, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[int] = []
    mon = Monitor(model, opt, every=5, sink=lambda s, m: seen.append(s))
    for step in range(0, 11):  # 0-based, as the engine counts
        mon.before_forward(step)
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
        mon.step()
        opt.zero_grad()
    assert seen == [0, 5, 10]


def test_bad_arguments_name_the_field():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="every must be a positive integer"):
        Monitor(model, opt, every=0)
    with pytest.raises(ValueError, match="level must be one of light, full"):
        Monitor(model, opt, level="verbose")


def test_monitor_names_are_the_plain_models_inside_torch_compile():
    """torch.compile's wrapper prefixes every name with "_orig_mod."; the metrics must not
    (DDP's "module." is checked by tests/test_distributed_optim.py)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    compiled = torch.compile(model)  # lazy: nothing compiles until a forward
    opt = torch.optim.SGD(compiled.parameters(), lr=0.1)
    monitor = Monitor(compiled, opt, every=1, output_logits=False)
    assert [t.name for t in monitor._tracked] == [n for n, _ in model.named_parameters()]
    monitor.close()
