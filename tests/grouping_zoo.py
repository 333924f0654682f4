"""The grouping test zoo: small models of every kind classify must get right.

Each builder is deterministic (seeded) so that verdicts can be recorded once with the old
probe (tests/data/grouping_verdicts.json, made by `python tests/grouping_zoo.py --record`
against wdlab at main b98efe8) and compared with every later version. The HF models are
built from tiny configs: nothing is downloaded.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

VERDICTS = Path(__file__).parent / "data" / "grouping_verdicts.json"
FIELDS = ("name", "shape", "role", "scale_invariant", "decay", "module_type", "tied_to")


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


class HeadFirst(nn.Module):
    """Head registered before the body, plus a weighted module run after the head whose
    result never reaches the output: neither must fool the output rule."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU())
        self.monitor = nn.Linear(16, 1)

    def example_input(self) -> torch.Tensor:
        return torch.randn(4, 6)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        logits = self.head(h)
        with torch.no_grad():
            self.last_monitor = self.monitor(h)
        return {"logits": logits * 2.0, "loss": logits.logsumexp(-1).mean()}


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    )


def _wdlab_gpt(**kw: Any) -> nn.Module:
    from wdlab.nn.transformer import GPT, GPTConfig

    return GPT(GPTConfig(vocab_size=64, context=16, n_layer=2, n_head=4, d_model=32, **kw))


def _hf_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=96, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    return GPT2LMHeadModel(cfg)


def _hf_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )
    return LlamaForCausalLM(cfg)


def _hf_bert() -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32,
    )
    return BertForMaskedLM(cfg)


def _ln_dropout() -> nn.Module:
    return nn.Sequential(
        nn.Linear(8, 16, bias=False), nn.LayerNorm(16), nn.Dropout(0.5), nn.Linear(16, 4)
    )


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "tiny_gpt_qknorm": lambda: TinyGPT(qk_norm=True),
    "tiny_gpt_post": lambda: TinyGPT(post=True, layers=3),
    "tiny_gpt_qkbias": lambda: TinyGPT(qk_norm=True, qk_bias=True),
    "gpt_pre_ln_qknorm": lambda: _wdlab_gpt(qk_norm=True),
    "gpt_post_rms": lambda: _wdlab_gpt(placement="post", norm="rmsnorm"),
    "gpt_peri_crms_sigma": lambda: _wdlab_gpt(
        placement="peri", norm="crmsnorm", sigma_reparam=True
    ),
    "gpt_mix_lnscaling_untied": lambda: _wdlab_gpt(
        placement="mix", ln_scaling=True, tie_embeddings=False, bias=True
    ),
    "resnet_bn": TinyResNet,
    "mlp": mlp,
    "ln_dropout": _ln_dropout,
    "head_first": HeadFirst,
    "hf_gpt2": _hf_gpt2,
    "hf_llama": _hf_llama,
    "hf_bert": _hf_bert,
}


def build(name: str) -> nn.Module:
    """The zoo model `name`, built under seed 0 (same values every time)."""
    torch.manual_seed(0)
    return BUILDERS[name]()


def verdicts(infos: list[Any]) -> list[dict[str, Any]]:
    """The fields of classify's answer that must not change (probe_change may)."""
    return [
        {f: (list(v) if isinstance(v := getattr(i, f), tuple) else v) for f in FIELDS}
        for i in infos
    ]


def recorded() -> dict[str, list[dict[str, Any]]]:
    return json.loads(VERDICTS.read_text())


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    from wdlab.groups import classify

    torch.set_num_threads(1)
    out = {}
    for zoo_name in BUILDERS:
        torch.manual_seed(1)
        out[zoo_name] = verdicts(classify(build(zoo_name)))
        print(zoo_name, len(out[zoo_name]), flush=True)
    VERDICTS.parent.mkdir(exist_ok=True)
    VERDICTS.write_text(json.dumps(out, indent=1) + "\n")


# --------------------------------------------------------------------------- distributed

DISTRIBUTED = ("tiny_gpt_qknorm", "resnet_bn")


def _shard(model: nn.Module, mesh: Any) -> nn.Module:
    """FSDP2 the way people do it: every block of a ModuleList / Sequential, then the root."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    for module in list(model.modules()):
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and module is not model:
            for block in module:
                params = list(block.parameters())
                if params and not any(isinstance(p, DTensor) for p in params):
                    fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def distributed_worker(rank: int, world: int, init_file: str) -> None:
    """On each of `world` gloo ranks: classify, input_weights, param_groups and
    create_optimizer on FSDP2- and DDP-wrapped zoo models must give the recorded verdicts."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from torch.nn.parallel import DistributedDataParallel as DDP

    import wdlab
    from wdlab.groups import classify, input_weights, param_groups

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        expected = recorded()
        for name in DISTRIBUTED:
            plain_inputs = input_weights(build(name))
            sharded = _shard(build(name), mesh)
            assert any(isinstance(p, DTensor) for p in sharded.parameters()), name
            got = verdicts(classify(sharded))
            assert got == expected[name], (name, "fsdp2", got)
            assert input_weights(sharded) == plain_inputs, name
            groups = param_groups(sharded, 1e-3, 0.1)
            ids = sorted(id(p) for g in groups for p in g["params"])
            assert ids == sorted(id(p) for p in sharded.parameters()), name
            opt = wdlab.create_optimizer(sharded, "adamw", lr=1e-3, weight_decay=0.1)
            named = [n for g in opt.param_groups for n in g["param_names"]]
            assert sorted(named) == sorted(i["name"] for i in expected[name]), name
            if name == DISTRIBUTED[0]:
                ddp = DDP(build(name))
                assert verdicts(classify(ddp)) == expected[name], (name, "ddp")
    finally:
        dist.destroy_process_group()
