"""wdlab.scaling: each rule on hand-computed widths, apply_init, and the grouping it drives."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import wdlab
from wdlab.factory import create_optimizer
from wdlab.groups import input_weights, param_groups
from wdlab.nn.layers import MuReadout
from wdlab.nn.transformer import GPT, GPTConfig
from wdlab.scaling import RULES, apply_init, role_scales, transfer_table

torch.set_num_threads(1)

LR, WD = 3e-3, 0.1


def rows(rule: str, w0: int, w1: int, **kw) -> dict[str, dict]:
    return {r["role"]: r for r in transfer_table(rule, w0, w1, LR, WD, **kw)}


def test_sp_changes_nothing() -> None:
    for r in rows("sp", 64, 512).values():
        assert r["init_std_mult"] == 1 and r["forward_mult"] == 1
        if r["role"] != "attention":
            assert (r["lr"], r["weight_decay"]) == (LR, WD)


@pytest.mark.parametrize(
    ("rule", "matrix_wd"),
    # 64 -> 512: m = 8. mup leaves λ; mup-wd and timescale keep η·λ (λ·8); fan λ·sqrt(8).
    [("mup", WD), ("mup-wd", WD * 8), ("timescale", WD * 8), ("fan", WD * math.sqrt(8))],
)
def test_mup_family_on_64_to_512(rule: str, matrix_wd: float) -> None:
    t = rows(rule, 64, 512)
    assert t["matrix"]["lr"] == pytest.approx(LR / 8)
    assert t["matrix"]["weight_decay"] == pytest.approx(matrix_wd)
    assert t["matrix"]["init_std_mult"] == pytest.approx(1 / math.sqrt(8))
    assert t["output"]["forward_mult"] == pytest.approx(1 / 8)
    assert t["attention"]["forward_mult"] == pytest.approx(1 / math.sqrt(8))
    for role in ("input", "embedding", "output", "vector", "bias"):
        assert t[role]["lr"] == pytest.approx(LR)
        assert t[role]["init_std_mult"] == 1
        assert t[role]["weight_decay"] == pytest.approx(0.0 if rule == "fan" else WD)


def test_sp_lr_scales_only_the_rates_of_matrices_and_readout() -> None:
    # 64 -> 256: m = 4. SP init and forward; hidden and readout lr/4; the rest as tuned.
    t = rows("sp-lr", 64, 256)
    for role, r in t.items():
        assert r["init_std_mult"] == 1 and r["forward_mult"] == 1
        if role != "attention":
            assert r["weight_decay"] == WD
            assert r["lr"] == pytest.approx(LR / 4 if role in ("matrix", "output") else LR)


def test_sp_lr_all_divides_every_rate_by_the_width_multiplier() -> None:
    # 64 -> 512: m = 8. SP init and forward; every parameter's lr/8, weight decay as tuned.
    t = rows("sp-lr-all", 64, 512)
    for role, r in t.items():
        assert r["init_std_mult"] == 1 and r["forward_mult"] == 1
        if role != "attention":
            assert r["lr"] == pytest.approx(LR / 8)
            assert r["weight_decay"] == WD


@pytest.mark.parametrize("rule", ["sp-lr", "sp-lr-all"])
def test_sp_lr_leaves_the_model_as_built(rule: str) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, context=8, n_layer=1, n_head=2, d_model=16,
                          tie_embeddings=False))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_init(model, rule, base_width=8, width=16)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert type(model.lm_head) is torch.nn.Linear  # no MuReadout swap


def test_timescale_keeps_tau_epoch_with_batch_and_data() -> None:
    # tau_epoch = B / (eta * lambda * N) must be equal before and after.
    b0, b1, n0, n1 = 32, 128, 10_000, 40_000
    t = rows("timescale", 64, 256, from_batch=b0, to_batch=b1, from_data=n0, to_data=n1)
    for role in ("matrix", "embedding"):
        tau0 = b0 / (LR * WD * n0)
        tau1 = b1 / (t[role]["lr"] * t[role]["weight_decay"] * n1)
        assert tau1 == pytest.approx(tau0)
    with pytest.raises(ValueError, match="timescale"):
        transfer_table("mup-wd", 64, 256, LR, WD, from_batch=32, to_batch=64)
    with pytest.raises(ValueError, match="from_batch and to_batch"):
        transfer_table("timescale", 64, 256, LR, WD, from_batch=32)


def test_independent_decay_keeps_the_shrink_per_step() -> None:
    # With independent decay the shrink per step is λ (no η): mup-wd keeps λ, fan scales it
    # by the shrink ratio η'λ'/(ηλ) of the decoupled rule, 1/sqrt(m).
    m = 4.0
    dec = role_scales("fan", m)["matrix"]
    ind = role_scales("fan", m, decay_mode="independent")["matrix"]
    assert ind.wd_mult == pytest.approx(dec.lr_mult * dec.wd_mult)
    assert role_scales("mup-wd", m, decay_mode="independent")["matrix"].wd_mult == 1.0


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_is_the_identity_at_base_width(rule: str) -> None:
    for r in rows(rule, 128, 128).values():
        assert r["init_std_mult"] == 1 and r["forward_mult"] == 1
        if r["role"] != "attention":
            assert r["lr"] == LR
            vector_like = r["role"] not in ("matrix",)
            assert r["weight_decay"] == (0.0 if rule == "fan" and vector_like else WD)


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="scaling must be one of"):
        transfer_table("nope", 64, 128, LR, WD)
    with pytest.raises(ValueError, match="base_width must be a positive integer"):
        transfer_table("mup", 0, 128, LR, WD)
    with pytest.raises(ValueError, match="lr must be a number > 0"):
        transfer_table("mup", 64, 128, -1.0, WD)
    with pytest.raises(ValueError, match="scaling needs the model's width"):
        param_groups(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), LR, WD, scaling="mup",
                     base_width=4)
    with pytest.raises(ValueError, match="only used with scaling"):
        param_groups(nn.Linear(4, 2), LR, WD, base_width=4)


def mlp(width: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 3))


def test_param_groups_apply_the_rule_per_role() -> None:
    model = mlp(32)
    groups = param_groups(model, LR, WD, scaling="mup-wd", base_width=8, width=32)
    by_name = {n: g for g in groups for n in g["param_names"]}
    # input layer (fan_in = data dim): lr kept; hidden: lr/4, λ·4; output: lr kept.
    assert by_name["0.weight"]["lr"] == LR and by_name["0.weight"]["weight_decay"] == WD
    assert by_name["2.weight"]["lr"] == pytest.approx(LR / 4)
    assert by_name["2.weight"]["weight_decay"] == pytest.approx(WD * 4)
    assert by_name["4.weight"]["lr"] == LR and by_name["4.weight"]["role"] == "output"
    assert by_name["2.bias"]["weight_decay"] == 0.0
    assert input_weights(model) == {"0.weight"}
    # sp with widths equals no scaling at all
    plain = param_groups(model, LR, WD)
    sp = param_groups(model, LR, WD, scaling="sp", base_width=8, width=32)
    strip = [{k: v for k, v in g.items() if k != "params"} for g in plain]
    assert strip == [{k: v for k, v in g.items() if k != "params"} for g in sp]


def gpt(d: int, tie: bool = True) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, context=8, n_layer=1, n_head=2, d_model=d,
                         tie_embeddings=tie))


@pytest.mark.parametrize("tie", [True, False])
def test_apply_init_on_gpt(tie: bool) -> None:
    base, width = 16, 64
    ref, model = gpt(width, tie), gpt(width, tie)
    x = ref.example_input()
    apply_init(model, "mup", base)
    assert isinstance(model.lm_head, MuReadout) and model.lm_head.width_mult == 4.0
    assert (model.lm_head.weight is model.wte.weight) == tie
    # hidden matrices scaled by sqrt(base/width) = 1/2; embeddings untouched
    q_ref, q_new = ref.blocks[0].attn.q_proj.weight, model.blocks[0].attn.q_proj.weight
    assert torch.allclose(q_new, q_ref / 2)
    assert torch.equal(model.wte.weight, ref.wte.weight)
    d_head = width // 2
    assert model.blocks[0].attn.scale == pytest.approx(1 / math.sqrt(d_head * 4))
    # readout: the logits are the head's output over width_mult
    with torch.no_grad():
        h = model.norm_f(model.blocks[0](model.wte(x) + model.wpe(torch.arange(8))))
        expect = h @ model.lm_head.weight.T / 4
        assert torch.allclose(model(x), expect, atol=1e-6)
    # applying again is a no-op; a different rule is refused
    before = model.blocks[0].attn.q_proj.weight.clone()
    apply_init(model, "mup", base)
    assert torch.equal(model.blocks[0].attn.q_proj.weight, before)
    with pytest.raises(ValueError, match="already scaled"):
        apply_init(model, "fan", base)


def test_apply_init_is_exact_identity_at_base_width() -> None:
    ref, model = gpt(32), gpt(32)
    apply_init(model, "fan", 32)
    x = ref.example_input()
    assert torch.equal(ref(x), model(x))


def test_create_optimizer_scales_init_and_groups() -> None:
    model = gpt(32)
    opt = create_optimizer(model, "adamw", lr=LR, weight_decay=WD, scaling="fan", base_width=8)
    assert isinstance(model.lm_head, MuReadout)
    lrs = {g["role"]: (g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert lrs["matrix"] == pytest.approx((LR / 4, WD * 2))  # λ·sqrt(4)
    assert lrs["embedding"] == (LR, 0.0)  # fan: vector-like λ = 0
    assert wdlab.create_optimizer is create_optimizer


def test_the_config_accepts_exactly_the_rules() -> None:
    # `--set optimizer.scaling=...` accepts every rule of wdlab.scaling and nothing else.
    import typing

    from wdlab.config import OptimizerConfig

    annotation = OptimizerConfig.model_fields["scaling"].annotation
    literal = next(a for a in typing.get_args(annotation) if a is not type(None))
    assert typing.get_args(literal) == RULES


def test_rules_are_torch_free_and_no_import_circle() -> None:
    """DESIGN.md "Layout, wave 2": _names and scaling.rules load without torch; groups
    imports scaling.rules only; scaling.init (needs groups) loads first or last alike."""
    import subprocess
    import sys

    rules_first = (
        "import sys\n"
        "import wdlab._names, wdlab.scaling\n"
        "from wdlab.scaling import RULES, role_scales, transfer_table\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert RULES == wdlab._names.RULES\n"
        "from wdlab.scaling import apply_init\n"  # lazily: init.py -> groups -> rules
        "import wdlab.scaling.init as init, wdlab.groups as groups\n"
        "assert apply_init is init.apply_init\n"
        "assert groups.role_scales is role_scales\n"
    )
    init_first = "import wdlab.scaling.init\nimport wdlab.factory\n"  # no circle either way
    # Two fresh interpreters (import order is what is tested), started together: each pays
    # `import torch`, so side by side they take the time of one.
    procs = [subprocess.Popen([sys.executable, "-c", code]) for code in (rules_first, init_first)]
    try:
        codes = [proc.wait(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert codes == [0, 0], "an import order failed (its traceback is above)"
