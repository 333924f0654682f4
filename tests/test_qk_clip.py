"""QK-Clip (Kimi K2): recorded per-head max logits against logits computed here, the rescaling
of W_q/W_k against its formula, logits <= tau on the next forward, the recipe and monitor."""

from __future__ import annotations

import math

import pytest
import torch

from wdlab import train
from wdlab.config import build_config
from wdlab.errors import ConfigError
from wdlab.nn.qk_clip import apply_qk_clip, clipped_modules
from wdlab.nn.transformer import GPT, GPTConfig
from wdlab.store import Store

torch.set_num_threads(1)


def head_logit_max(model: GPT, idx: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, per head: the largest causal q_i . k_j / sqrt(d_head), from q_proj/k_proj
    outputs captured by hooks and multiplied out here in float64."""
    seen: dict[int, dict[str, torch.Tensor]] = {}
    hooks = []
    for i, block in enumerate(model.blocks):
        for name in ("q_proj", "k_proj"):
            hooks.append(getattr(block.attn, name).register_forward_hook(
                lambda mod, args, out, i=i, name=name: seen.setdefault(i, {}).__setitem__(
                    name, out.detach().double())))
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    out = []
    cfg = model.config
    t = idx.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for i in range(cfg.n_layer):
        q = seen[i]["q_proj"].view(*idx.shape, cfg.n_head, cfg.d_head).transpose(1, 2)
        k = seen[i]["k_proj"].view(*idx.shape, cfg.n_head, cfg.d_head).transpose(1, 2)
        logits = (q @ k.transpose(-2, -1)) / math.sqrt(cfg.d_head)
        out.append(logits.masked_fill(~causal, -math.inf).amax(dim=(0, 2, 3)))
    return out


def spiky_model(tau: float, bias: bool = False) -> GPT:
    """A GPT whose first heads have large logits (W_q, W_k of heads 0 and 2 blown up)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=17, context=12, n_layer=2, n_head=4, d_model=16,
                          qk_clip=tau, bias=bias))
    with torch.no_grad():
        for block in model.blocks:
            for proj in (block.attn.q_proj, block.attn.k_proj):
                proj.weight[0:4] *= 40.0   # head 0
                proj.weight[8:12] *= 25.0  # head 2
                if bias:
                    proj.bias.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("bias", [False, True])
def test_clip_rescales_heads_above_tau_and_their_logits_land_on_tau(bias: bool) -> None:
    tau = 5.0
    model = spiky_model(tau, bias).train()
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 17, (3, 12), generator=gen)
    before = head_logit_max(model, idx)
    # what the forward recorded (running max over two micro-batches: the same batch twice)
    model(idx)
    model(idx)
    for block, want in zip(model.blocks, before, strict=True):
        torch.testing.assert_close(block.attn.max_logit_seen.double(), want, rtol=1e-5, atol=1e-5)
    over = [b > tau for b in before]
    assert any(o.any() for o in over) and not all(o.all() for o in over)
    weights = [(b.attn.q_proj.weight.detach().clone(), b.attn.k_proj.weight.detach().clone())
               for b in model.blocks]
    clipped = apply_qk_clip(model)
    assert clipped == sum(int(o.sum()) for o in over)
    for block, top, (wq, wk) in zip(model.blocks, before, weights, strict=True):
        gamma = torch.where(top > tau, tau / top, torch.ones_like(top))
        rows = gamma.sqrt().repeat_interleave(4).float()[:, None]
        torch.testing.assert_close(block.attn.q_proj.weight.detach(), wq * rows, rtol=1e-6,
                                   atol=0)
        torch.testing.assert_close(block.attn.k_proj.weight.detach(), wk * rows, rtol=1e-6,
                                   atol=0)
        stats = block.attn.qk_clip_stats
        assert int(stats["clipped"]) == int((top > tau).sum())
        assert block.attn.max_logit_seen is None  # reset for the next step
    # Layer 0's input is unchanged by the clip, so its clipped heads now peak at tau exactly
    # and the others are untouched; deeper layers see changed inputs but are bounded too.
    after = head_logit_max(model, idx)
    expect0 = torch.where(over[0], torch.full_like(before[0], tau), before[0])
    torch.testing.assert_close(after[0], expect0, rtol=1e-5, atol=1e-5)
    assert after[0].max() <= tau * (1 + 1e-5)
    # Nothing recorded in eval mode; a clip with nothing seen does nothing.
    for block in model.blocks:
        block.attn.max_logit_seen = None  # (head_logit_max's train-mode forward recorded)
    model.eval()
    model(idx)
    assert all(b.attn.max_logit_seen is None for b in model.blocks)
    assert apply_qk_clip(model) == 0


def test_clip_off_and_bad_settings() -> None:
    model = GPT(GPTConfig(vocab_size=9, context=8, n_layer=1, n_head=2, d_model=8))
    assert clipped_modules(model) == []
    model(torch.zeros(1, 8, dtype=torch.long))
    assert model.blocks[0].attn.max_logit_seen is None  # no extra work without qk_clip
    with pytest.raises(ConfigError, match="qk_norm"):
        GPTConfig(vocab_size=9, qk_clip=10.0, qk_norm=True)
    with pytest.raises(ConfigError, match="qk_clip"):
        GPTConfig(vocab_size=9, qk_clip=-1.0)
    with pytest.raises(ConfigError, match="qk_norm"):
        build_config("charlm", tiny=True, assignments=["model.qk_clip=10", "model.qk_norm=true"])


def test_recipe_option_clips_during_training_and_the_monitor_reports_it(tmp_path) -> None:
    """`--set model.qk_clip=TAU` on charlm: the engine clips after each step and the monitor
    logs the per-layer max logit before clipping and the number of heads clipped; with a tau
    below the initial logits every measured step clips."""
    config = build_config("charlm", tiny=True, flags={"steps": 4},
                          assignments=["model.qk_clip=0.01", "train.monitor_every=2",
                                       "train.stop_at_target=false"])
    with Store(tmp_path / "s.db") as store:
        result = train.run(config, store, tmp_path / "runs")
        metrics = store.metrics(result.run_id)
    layers = config.model.get("n_layer", 4) if isinstance(config.model, dict) else 4
    clipped = [k for k in metrics if k.startswith("mon/qk_clip_clipped/layer:")]
    maxima = [k for k in metrics if k.startswith("mon/qk_clip_max_logit/layer:")]
    assert len(clipped) == len(maxima) >= 1 and len(clipped) <= layers
    for key in clipped:
        assert [s for s, _ in metrics[key]] == [2, 4]
        assert all(v >= 1 for _, v in metrics[key])  # tau 0.01 is below every head's max
    for key in maxima:
        assert all(v > 0.01 for _, v in metrics[key])
