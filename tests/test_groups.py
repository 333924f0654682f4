"""wdlab.groups: roles, probed scale invariance, tied/frozen/wrapped models, param groups."""

from __future__ import annotations

import copy
import random

import grouping_zoo as zoo
import pytest
import torch
from grouping_zoo import HeadFirst, TinyGPT, TinyResNet, mlp
from torch import nn
from torch.nn.utils import parametrize

from wdlab.groups import PROBE_TOL, ParamInfo, classify, param_groups

torch.set_num_threads(1)

# --------------------------------------------------------------------------- test models


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
    assert by_name(classify(emb))["2.weight"].role == "output"  # ints of shape (1, 8)

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


def test_token_input_is_one_sequence_and_two_where_a_batch_norm_needs_them() -> None:
    """The inferred token input is one sequence of 8 (memory: the screen's graph grows with
    the tokens); a model whose BatchNorm normalizes pooled sequences cannot train on one,
    and is probed on two, the input the probe drew before (same seed, same verdicts)."""
    from wdlab._probe import infer_input

    emb = nn.Sequential(nn.Embedding(11, 4), nn.Flatten(), nn.Linear(32, 2))
    assert infer_input(emb)[0].shape == (1, 8)
    assert infer_input(emb, token_batch=2)[0].shape == (2, 8)

    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(20, 8)
            self.lin = nn.Linear(8, 8, bias=False)
            self.bn = nn.BatchNorm1d(8)
            self.head = nn.Linear(8, 3)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.bn(self.lin(self.tok(idx).mean(1)))))

    torch.manual_seed(0)
    model = Pooled()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model.train()(infer_input(model)[0])
    infos = classify(model)
    torch.manual_seed(0)
    two = torch.randint(0, 20, (2, 8))
    assert zoo.verdicts(infos) == zoo.verdicts(classify(model, two))
    assert [i.probe_change for i in infos] == [i.probe_change for i in classify(model, two)]
    assert by_name(infos)["head.weight"].role == "output"


def test_affine_sums_equal_the_whole_tensor_formula() -> None:
    """The output layer's screen sums, taken a block of rows at a time, equal the sums of
    the whole product t = g·(y - b) (Linear, Conv2d, Embedding, a vector output)."""
    from wdlab._probe import _affine_sums

    gen = torch.Generator().manual_seed(0)
    cases = [
        ((3, 5, 70), (70,)),  # Linear: bias over the last dim
        ((4, 6, 9, 9), (6, 1, 1)),  # Conv2d: bias over the channels
        ((2, 8, 33), None),  # Embedding: no bias
        ((70,), (70,)),  # a Linear on one vector: the bias spans every dim
    ]
    for shape, bias_shape in cases:
        g, y = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
        b = None if bias_shape is None else torch.randn(bias_shape, generator=gen)
        t = (g * (y - b) if b is not None else g * y).double()
        scale = (g * y).double().abs().sum()
        want = (float(t.sum()), float((t * t).sum()), float(t.abs().sum() + scale))
        got = _affine_sums(g, y, b, chunk=64)  # blocks of rows smaller than one row, too
        assert got == pytest.approx(want, rel=1e-6), (shape, bias_shape)



def test_nondeterministic_model_is_refused() -> None:
    """The exact test compares runs, so a model that drifts between identical forwards is
    refused where it matters: lin.weight (before a norm) needs the exact test at the root."""

    class Drifting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 4, bias=False)
            self.norm = nn.LayerNorm(4)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.norm(self.lin(x)) * self.calls

    model = Drifting()
    with pytest.raises(ValueError, match="deterministic"):
        classify(model)
    assert model.calls == 0  # the caller's model is never run


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


# --------------------------------------------------------------------------- the zoo


@pytest.mark.parametrize("name", list(zoo.BUILDERS))
def test_zoo_verdicts_equal_the_old_probe(name: str) -> None:
    """Recorded with the float64 whole-model probe of main b98efe8 (tests/grouping_zoo.py)."""
    if name.startswith("hf_"):
        pytest.importorskip("transformers")
    torch.manual_seed(1)
    assert zoo.verdicts(classify(zoo.build(name))) == zoo.recorded()[name]


@pytest.mark.parametrize("name", ["tiny_gpt_qknorm", "resnet_bn", "head_first", "hf_llama"])
def test_meta_device_model_classifies_like_the_built_one(name: str) -> None:
    if name.startswith("hf_"):
        pytest.importorskip("transformers")
    with torch.device("meta"):
        model = zoo.BUILDERS[name]()
    assert all(p.is_meta for p in model.parameters())
    assert zoo.verdicts(classify(model)) == zoo.recorded()[name]
    groups = param_groups(model, 1e-3, 0.1)
    assert sum(len(g["params"]) for g in groups) == len(zoo.recorded()[name])
    assert all(p.is_meta for p in model.parameters())  # still deferred


def test_compiled_in_place_and_compiled_submodules() -> None:
    expected = zoo.recorded()["tiny_gpt_qknorm"]
    model = zoo.build("tiny_gpt_qknorm")
    model.compile()  # in place: a compiled _call_impl bound to the original
    assert zoo.verdicts(classify(model)) == expected
    model = zoo.build("resnet_bn")
    model.blocks[0] = torch.compile(model.blocks[0])  # names gain "_orig_mod."
    infos = by_name(classify(model))
    conv = infos["blocks.0._orig_mod.conv1.weight"]
    assert conv.scale_invariant and conv.role == "matrix"
    assert infos["fc.weight"].role == "output"


def test_variant_weights_are_settled_without_rerunning_the_model(monkeypatch) -> None:
    """GPT-2 has no scale-invariant weight: the one forward/backward screen decides all of
    them, no float64 replica is run (what makes classify cheap at 124M)."""
    pytest.importorskip("transformers")
    from wdlab import _probe

    def refuse(*args, **kwargs):
        raise AssertionError("exact test run")

    monkeypatch.setattr(_probe.Probe, "_exact", refuse)
    assert zoo.verdicts(classify(zoo.build("hf_gpt2"))) == zoo.recorded()["hf_gpt2"]


def test_fsdp2_and_ddp_on_two_gloo_ranks(tmp_path) -> None:
    """classify / input_weights / param_groups / create_optimizer on fully_shard'ed and DDP
    models (2 CPU ranks, one job) give the plain model's recorded verdicts on every rank."""
    import multiprocessing

    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    import torch.distributed.fsdp  # noqa: F401  (imported once here, not in each rank)

    # fork: the ranks inherit the imports (spawning re-imports torch: ~4x slower)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    mp.start_processes(
        zoo.distributed_worker, args=(2, str(tmp_path / "init")), nprocs=2, start_method=method
    )


# --------------------------------------------------------------------------- user reports


class TimmStyleViT(nn.Module):
    """What timm's ViT / Swin look like to a grouping tool: a (1, T, D) position parameter,
    a (1, 1, D) cls token, a relative-position table, and timm's no-decay methods."""

    def __init__(self, d: int = 16, patches: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, patches + 1, d) * 0.02)
        self.relative_position_bias_table = nn.Parameter(torch.randn(9, 2) * 0.02)
        self.blocks = nn.Sequential(zoo.Block(d, 2, qk_norm=False, qk_bias=True, post=False))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 5)
        self.mask = nn.Conv2d(3, 1, 3, padding=1)  # weight (1, 3, 3, 3): a matrix

    def example_input(self) -> torch.Tensor:
        return torch.randn(4, 3, 8, 8)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def no_weight_decay_keywords(self) -> set[str]:
        return {"relative_position_bias_table"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.mask(x)).mean()
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(x), -1, -1), t], 1) + self.pos_embed
        t = self.blocks(t) + self.relative_position_bias_table.sum()
        return self.head(self.norm(t[:, 0])) * gate


def test_position_parameter_is_an_embedding_and_no_weight_decay_is_honoured() -> None:
    model = TimmStyleViT()
    info = by_name(classify(model))
    assert info["pos_embed"].role == "embedding" and not info["pos_embed"].decay
    assert info["cls_token"].role == "embedding" and not info["cls_token"].decay
    table = info["relative_position_bias_table"]
    assert table.role == "matrix" and not table.decay  # keyword match, timm's Swin way
    assert info["mask.weight"].role == "matrix" and info["mask.weight"].decay
    assert info["patch.weight"].role == "matrix" and info["patch.weight"].decay
    assert info["head.weight"].role == "output"
    where = {n: g for g in param_groups(model, 1e-3, 0.1) for n in g["param_names"]}
    assert where["pos_embed"]["weight_decay"] == 0.0
    assert where["patch.weight"]["weight_decay"] == 0.1
    # Overrides still win over the model's own list.
    over = param_groups(model, 1e-3, 0.1, overrides={"pos_embed": {"weight_decay": 0.05}})
    assert {n: g["weight_decay"] for g in over for n in g["param_names"]}["pos_embed"] == 0.05
    # Without the methods the same parameters decay (the names alone decide nothing).
    plain = TimmStyleViT()
    plain.no_weight_decay = lambda: set()  # type: ignore[method-assign]
    plain.no_weight_decay_keywords = lambda: set()  # type: ignore[method-assign]
    assert by_name(classify(plain))["pos_embed"].decay
    plain.no_weight_decay = lambda: "pos_embed"  # type: ignore[method-assign]
    with pytest.raises(ValueError, match=r"no_weight_decay\(\) must return a set"):
        classify(plain, probe=False)


@pytest.mark.parametrize("name", ["adamw", "sgdw", "lion", "muon", "adamp", "sgdp", "scale"])
def test_add_param_group_on_optimizers_wdlab_built(name: str) -> None:
    import wdlab

    torch.manual_seed(0)
    model = mlp()
    model[0].weight.requires_grad_(False)  # unfrozen later, as in fine-tuning
    opt = wdlab.create_optimizer(model, name, lr=1e-3, weight_decay=0.1)
    model[0].weight.requires_grad_(True)
    extra = nn.Parameter(torch.randn(3))
    opt.add_param_group({"params": [model[0].weight], "lr": 1e-4})
    opt.add_param_group({"params": iter([extra])})  # torch accepts any iterable but a set
    assert opt.param_groups[-2]["param_names"] == ["0.weight"]
    assert opt.param_groups[-2]["role"] == "matrix" and opt.param_groups[-2]["lr"] == 1e-4
    assert opt.param_groups[-1]["param_names"] == [f"added.{len(opt.param_groups) - 1}.0"]
    assert opt.param_groups[-1]["role"] == "vector"
    before = model[0].weight.detach().clone()
    model(torch.randn(4, 6)).square().mean().backward()
    extra.grad = torch.ones(3)
    opt.step()
    assert not torch.equal(model[0].weight, before)
    state = copy.deepcopy(opt.state_dict())
    assert [g["param_names"] for g in state["param_groups"]][-1] == opt.param_groups[-1][
        "param_names"
    ]
    opt.load_state_dict(state)
    named = {"params": [nn.Parameter(torch.zeros(2))], "param_names": ["mine"], "role": "bias"}
    opt.add_param_group(named)  # the caller's own names and role stand
    assert opt.param_groups[-1]["param_names"] == ["mine"]
    assert opt.param_groups[-1]["role"] == "bias"


# --------------------------------------------------------------------------- the cache


def test_classify_is_cached_until_a_parameter_changes(monkeypatch) -> None:
    from wdlab import _probe

    model = TinyResNet()
    first = classify(model)
    runs = []
    real = _probe.Probe.__init__

    def counting(self, *args, **kwargs):
        runs.append(1)
        real(self, *args, **kwargs)

    monkeypatch.setattr(_probe.Probe, "__init__", counting)
    assert classify(model) == first and runs == []  # cached
    assert param_groups(model, 1e-3, 0.1) and runs == []  # param_groups reuses it
    classify(model, decay_output=False)
    assert len(runs) == 1  # other arguments: probed again
    classify(model, torch.randn(4, 3, 16, 16))
    assert len(runs) == 2  # another example input
    classify(model, decay_output=False)
    assert len(runs) == 3  # the cache holds the last answer only
    with torch.no_grad():
        model.fc.weight.mul_(1.0)  # an in-place update (an optimizer step)
    assert classify(model, decay_output=False) == classify(model, decay_output=False)
    assert len(runs) == 4
    model.fc.weight.requires_grad_(False)  # frozen: the answer changes
    assert "fc.weight" not in by_name(classify(model))
    model.fc = nn.Linear(8, 10, bias=False)  # a swapped module
    assert "fc.bias" not in by_name(classify(model))
    assert len(runs) == 6
