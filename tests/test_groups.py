"""wdlab.groups: roles, probed scale invariance, tied/frozen/wrapped models, param groups."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from wdlab.groups import PROBE_TOL, ParamInfo, classify, param_groups

torch.set_num_threads(1)

# --------------------------------------------------------------------------- test models


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, qk_norm: bool, qk_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d, bias=qk_bias)
        self.k = nn.Linear(d, d, bias=qk_bias)
        self.v = nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        self.q_norm = nn.LayerNorm(d // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(d // heads) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q = self.q_norm(split(self.q(x)))
        k = self.k_norm(split(self.k(x)))
        y = F.scaled_dot_product_attention(q, k, split(self.v(x)), is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, qk_norm: bool, qk_bias: bool, post: bool) -> None:
        super().__init__()
        self.post = post
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads, qk_norm, qk_bias)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post:
            x = self.ln1(x + self.attn(x))
            return self.ln2(x + self.mlp(x))
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Pre-LN GPT, head tied to the token embedding; q/k without bias as in Wortsman et al."""

    def __init__(
        self, vocab=40, d=32, heads=4, layers=2, block=16, qk_norm=False, qk_bias=False, post=False
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(block, d)
        blocks = (Block(d, heads, qk_norm, qk_bias, post) for _ in range(layers))
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight
        self.vocab, self.block = vocab, block

    def example_input(self) -> torch.Tensor:
        return torch.randint(0, self.vocab, (2, self.block))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(x + y)


class TinyResNet(nn.Module):
    def __init__(self, c: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.blocks = nn.Sequential(ResBlock(c), ResBlock(c))
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    )


def by_name(infos: list[ParamInfo]) -> dict[str, ParamInfo]:
    return {i.name: i for i in infos}


def gpt_input() -> torch.Tensor:
    return torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(1))


def rel_change_when_scaled(model: nn.Module, name: str, x, c: float) -> float:
    """Independent check of f(c·w) = f(w): float64 copy, train mode, one scale c."""
    m = copy.deepcopy(model).double().train()
    x = x.double() if x.is_floating_point() else x
    with torch.no_grad():
        state = copy.deepcopy(m.state_dict())
        y0 = m(x)
        m.load_state_dict(state)
        dict(m.named_parameters())[name].mul_(c)
        y1 = m(x)
    return float((y1 - y0).abs().max() / y0.abs().max())


# --------------------------------------------------------------------------- GPT


def test_gpt_roles_tied_once_and_decay() -> None:
    model = TinyGPT(qk_norm=True)
    infos = classify(model)
    info = by_name(infos)
    trainable = {id(p) for p in model.parameters()}
    assert len(infos) == len(trainable)  # every trainable parameter exactly once
    assert "head.weight" not in info
    assert info["tok.weight"].tied_to == ("head.weight",)
    assert info["tok.weight"].role == "embedding" and info["tok.weight"].decay
    assert info["pos.weight"].role == "embedding"
    assert not any(i.role == "output" for i in infos)  # the tied head stays "embedding"
    for i in infos:
        local = i.name.rsplit(".", 1)[-1]
        if ".ln" in i.name or "_norm" in i.name:
            assert i.module_type == "LayerNorm"
            assert i.role == ("vector" if local == "weight" else "bias")
            assert not i.decay
        elif local == "bias":
            assert i.role == "bias" and not i.decay
        elif i.module_type == "Linear":
            assert i.role == "matrix" and i.decay
        assert i.shape == tuple(dict(model.named_parameters())[i.name].shape)
        assert i.numel == torch.Size(i.shape).numel()
    no_emb = by_name(classify(model, decay_embedding=False))
    assert not no_emb["tok.weight"].decay and not no_emb["pos.weight"].decay


@pytest.mark.parametrize("qk_norm", [True, False])
def test_qk_norm_makes_q_and_k_scale_invariant(qk_norm: bool) -> None:
    model = TinyGPT(qk_norm=qk_norm)
    infos = classify(model, gpt_input())
    invariant = {i.name for i in infos if i.scale_invariant}
    qk = {f"blocks.{b}.attn.{w}.weight" for b in range(2) for w in "qk"}
    assert invariant == (qk if qk_norm else set())
    for name in qk:  # agrees with a direct computation at a scale the probe does not use
        change = rel_change_when_scaled(model, name, gpt_input(), 3.0)
        assert (change < 1e-3) == qk_norm, (name, change)


def test_bias_before_qk_norm_breaks_invariance() -> None:
    """Probing, not names: q·x + b under a LayerNorm is not invariant to scaling q."""
    infos = by_name(classify(TinyGPT(qk_norm=True, qk_bias=True), gpt_input()))
    assert not infos["blocks.0.attn.q.weight"].scale_invariant
    assert infos["blocks.0.attn.q.weight"].probe_change > 100 * PROBE_TOL


def test_weak_non_invariance_at_init_is_still_found() -> None:
    """Post-LN with GPT-2 init: the first block's attention logits are ~0, so scaling q or k
    by 2 barely moves the output (second order); the probe must still call them variant."""
    torch.manual_seed(0)
    model = TinyGPT(post=True, layers=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02)
    info = by_name(classify(model, gpt_input()))
    x = gpt_input()
    for b in range(3):
        for w in "qk":
            name = f"blocks.{b}.attn.{w}.weight"
            assert not info[name].scale_invariant, (name, info[name].probe_change)
    assert rel_change_when_scaled(model, "blocks.0.attn.q.weight", x, 2.0) < 1e-4


# --------------------------------------------------------------------------- ResNet, MLP


def test_resnet_convs_before_batchnorm_are_invariant_head_is_output() -> None:
    model = TinyResNet()
    infos = by_name(classify(model))  # input inferred from the stem Conv2d
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5
    for n in convs:
        assert infos[f"{n}.weight"].scale_invariant and infos[f"{n}.weight"].role == "matrix"
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert rel_change_when_scaled(model, "blocks.0.conv2.weight", x, 3.0) < 1e-4
    assert rel_change_when_scaled(model, "fc.weight", x, 3.0) > 0.1
    assert infos["fc.weight"].role == "output" and not infos["fc.weight"].scale_invariant
    assert infos["fc.bias"].role == "bias"
    for n, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert infos[f"{n}.weight"].role == "vector" and not infos[f"{n}.weight"].decay
            assert infos[f"{n}.bias"].role == "bias"
    assert not by_name(classify(model, decay_output=False))["fc.weight"].decay


def test_mlp_nothing_invariant_and_frozen_skipped() -> None:
    model = mlp()
    infos = classify(model)
    assert [i.role for i in infos] == ["matrix", "bias", "matrix", "bias", "output", "bias"]
    assert not any(i.scale_invariant for i in infos)
    assert all(i.probe_change > 1e-3 for i in infos if i.probe_change is not None)
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    names = [i.name for i in classify(model)]
    assert names == ["2.weight", "2.bias", "4.weight", "4.bias"]
    model[4].weight.requires_grad_(False)  # a frozen head is still the head
    assert [i.role for i in classify(model)] == ["matrix", "bias", "bias"]


def test_dropout_and_layernorm_probe_is_deterministic() -> None:
    model = nn.Sequential(
        nn.Linear(8, 16, bias=False), nn.LayerNorm(16), nn.Dropout(0.5), nn.Linear(16, 4)
    )
    info = by_name(classify(model))
    assert info["0.weight"].scale_invariant
    assert not info["3.weight"].scale_invariant and info["3.weight"].role == "output"


def test_parametrized_weight_probed_through_the_parametrization() -> None:
    class UnitNorm(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w / w.norm()

    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    parametrize.register_parametrization(model[0], "weight", UnitNorm())
    info = by_name(classify(model))
    w = info["0.parametrizations.weight.original"]
    assert w.module_type == "Linear" and w.role == "matrix" and w.scale_invariant
    assert not info["2.weight"].scale_invariant


# --------------------------------------------------------------------------- wrappers


class Wrapper(nn.Module):  # what DDP / DataParallel look like from outside
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.module = m


def test_wrapped_and_compiled_models_classify_identically() -> None:
    model = TinyResNet()
    plain = classify(model)
    assert classify(Wrapper(model)) == plain
    compiled = torch.compile(model)  # never called: only its _orig_mod is read
    assert classify(compiled) == plain
    assert classify(Wrapper(compiled)) == plain


def test_caller_model_and_rng_untouched() -> None:
    model = TinyResNet()
    model.eval()
    before = copy.deepcopy(model.state_dict())
    grads_before = [p.grad for p in model.parameters()]
    torch.manual_seed(123)
    random.seed(7)
    rng, py = torch.get_rng_state(), random.getstate()
    classify(model)
    assert torch.equal(torch.get_rng_state(), rng)
    assert random.getstate() == py
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():  # weights, running_mean/var, num_batches_tracked
        assert v.dtype == after[k].dtype and torch.equal(v, after[k]), k
    assert not model.training and not any(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert [p.grad for p in model.parameters()] == grads_before


# --------------------------------------------------------------------------- output layer


class HeadFirst(nn.Module):
    """Head registered before the body, plus a weighted module run after the head whose
    result never reaches the output: neither must fool the output rule."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU())
        self.monitor = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        logits = self.head(h)
        with torch.no_grad():
            self.last_monitor = self.monitor(h)
        return {"logits": logits * 2.0, "loss": logits.logsumexp(-1).mean()}


def test_output_is_last_executed_module_feeding_the_output() -> None:
    x = torch.randn(4, 6)
    info = by_name(classify(HeadFirst(), x))
    assert info["head.weight"].role == "output"
    assert info["body.0.weight"].role == "matrix"
    assert info["monitor.weight"].role == "matrix"
    # probe=False runs nothing and uses registration order instead (documented).
    fast = by_name(classify(HeadFirst(), probe=False))
    assert fast["monitor.weight"].role == "output"
    assert not any(i.scale_invariant or i.probe_change is not None for i in fast.values())


def test_declared_roles_win() -> None:
    model = HeadFirst()
    model.monitor.wdlab_role = "output"
    model.body[0].wdlab_role = {"bias": "vector"}
    info = by_name(classify(model, torch.randn(4, 6)))
    assert info["monitor.weight"].role == "output"
    assert info["head.weight"].role == "matrix"  # a declared output switches inference off
    assert info["body.0.bias"].role == "vector"
    model.monitor.wdlab_role = "head"
    with pytest.raises(ValueError, match="wdlab_role.*'head'.*allowed"):
        classify(model, probe=False)


def test_tied_head_declared_output_stays_embedding() -> None:
    model = TinyGPT()
    model.head.wdlab_role = "output"
    info = by_name(classify(model, probe=False))
    assert info["tok.weight"].role == "embedding"


# --------------------------------------------------------------------------- probe input


def test_example_input_inference_and_errors() -> None:
    emb = nn.Sequential(nn.Embedding(11, 4), nn.Flatten(), nn.Linear(32, 2))
    assert by_name(classify(emb))["2.weight"].role == "output"  # ints of shape (2, 8)

    class NormFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(5)
            self.lin = nn.Linear(5, 2, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(self.norm(x))

    with pytest.raises(ValueError, match="example_input"):
        classify(NormFirst())
    NormFirst.example_input = lambda self: torch.randn(3, 5)
    assert by_name(classify(NormFirst()))["lin.weight"].role == "output"

    wrong = nn.Sequential(nn.Linear(4, 4), nn.Linear(5, 2))  # inferred input cannot run
    with pytest.raises(ValueError, match="example_input"):
        classify(wrong)


def test_nondeterministic_model_is_refused() -> None:
    class Drifting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.lin(x) * self.calls

    with pytest.raises(ValueError, match="deterministic"):
        classify(Drifting())


# --------------------------------------------------------------------------- param groups


def _named(model: nn.Module) -> dict[str, nn.Parameter]:
    return dict(model.named_parameters())


def test_param_groups_partition_and_settings() -> None:
    model = TinyGPT(qk_norm=True)
    infos = classify(model)
    groups = param_groups(model, 1e-3, 0.1, infos=infos)
    seen = [p for g in groups for p in g["params"]]
    assert len(seen) == len({id(p) for p in model.parameters()}) == len(set(map(id, seen)))
    keys = [(g["role"], g["scale_invariant"], g["lr"], g["weight_decay"]) for g in groups]
    assert len(keys) == len(set(keys))  # identical settings share one group
    named = _named(model)
    info = by_name(infos)
    for g in groups:
        assert set(g) == {"params", "param_names", "lr", "weight_decay", "role", "scale_invariant"}
        for name, p in zip(g["param_names"], g["params"], strict=True):
            assert named[name] is p
            assert g["role"] == info[name].role
            assert g["scale_invariant"] == info[name].scale_invariant
            assert g["weight_decay"] == (0.1 if info[name].decay else 0.0)
            assert g["lr"] == 1e-3
    assert param_groups(model, 1e-3, 0.1, example_input=gpt_input())[0]["param_names"]


@pytest.mark.parametrize("make", [torch.optim.AdamW, torch.optim.SGD])
def test_groups_work_with_torch_optimizers_and_state_dict(make) -> None:
    torch.manual_seed(0)
    model = TinyResNet()
    x = torch.randn(4, 3, 8, 8)

    def step(m: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()

    kw = {"momentum": 0.9} if make is torch.optim.SGD else {}
    opt = make(param_groups(model, 0.05, 0.1), lr=0.05, **kw)
    for _ in range(2):
        step(model, opt)
    saved = copy.deepcopy(opt.state_dict())  # like a checkpoint: no aliasing of buffers
    assert all("param_names" in g and "role" in g for g in saved["param_groups"])

    # Resume on a copy from an equal-but-fresh optimizer: identical next step.
    resumed = copy.deepcopy(model)
    opt2 = make(param_groups(resumed, 0.05, 0.1), lr=0.05, **kw)
    opt2.load_state_dict(saved)
    names = [g["param_names"] for g in saved["param_groups"]]
    assert [g["param_names"] for g in opt2.param_groups] == names
    step(model, opt)
    step(resumed, opt2)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)

    # A later named group is accepted (torch requires all-or-none names).
    extra = nn.Parameter(torch.zeros(3))
    opt.add_param_group({"params": [extra], "param_names": ["extra"], "lr": 0.01})
    assert opt.param_groups[-1]["param_names"] == ["extra"]


def test_overrides() -> None:
    model = TinyGPT()
    infos = classify(model, probe=False)
    groups = param_groups(
        model,
        1e-3,
        0.1,
        infos=infos,
        overrides={
            "blocks.*.mlp.*": {"lr": 5e-4},
            "blocks.1.mlp.0.weight": {"lr": 2e-4, "decay": False},  # later wins
            "*.ln1.bias": {"weight_decay": 0.01},  # turns decay on for a bias
            "head.weight": {"weight_decay": 0.3},  # a tied parameter's other name
        },
    )
    where = {n: g for g in groups for n in g["param_names"]}
    assert where["blocks.0.mlp.0.weight"]["lr"] == 5e-4
    assert where["blocks.0.mlp.0.bias"]["lr"] == 5e-4
    assert where["blocks.0.mlp.0.weight"]["weight_decay"] == 0.1
    assert where["blocks.1.mlp.0.weight"]["lr"] == 2e-4
    assert where["blocks.1.mlp.0.weight"]["weight_decay"] == 0.0
    assert where["blocks.0.ln1.bias"]["weight_decay"] == 0.01
    assert where["blocks.0.ln1.weight"]["weight_decay"] == 0.0
    assert where["tok.weight"]["weight_decay"] == 0.3
    assert where["blocks.0.attn.q.weight"]["lr"] == 1e-3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overrides": {"nothing.*": {"lr": 1.0}}}, r"'nothing\.\*' matches no"),
        ({"overrides": {"*": {"betas": 1.0}}}, r"overrides\['\*'\]\['betas'\].*allowed"),
        ({"overrides": {"*": {"decay": 1}}}, r"overrides\['\*'\]\['decay'\] must be True"),
        ({"overrides": {"*": {"lr": -1}}}, r"overrides\['\*'\]\['lr'\] must be a number"),
        ({"overrides": {"*": {"decay": False, "weight_decay": 0.1}}}, "keep one"),
        ({"overrides": ["*"]}, "overrides must be a dict"),
        ({"lr": -0.1}, "^lr must be"),
        ({"weight_decay": "x"}, "^weight_decay must be"),
        ({"decay_output": "yes"}, "^decay_output must be True or False"),
    ],
)
def test_param_groups_errors_name_the_field(kwargs: dict, message: str) -> None:
    args = {"lr": 1e-3, "weight_decay": 0.1, "probe": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        param_groups(mlp(), **args)


def test_infos_must_match_model() -> None:
    with pytest.raises(ValueError, match="infos do not match"):
        param_groups(mlp(), 1e-3, 0.1, infos=classify(TinyResNet(), probe=False))
    model = mlp()
    assert param_groups(model, 1e-3, 0.1, infos=classify(model)) == param_groups(model, 1e-3, 0.1)
