"""grokking: a ∘ b mod p on a fixed half of all pairs, full batch (Power et al.; REFERENCE §7).

With weight decay the model first memorizes the training pairs and only much later
generalizes to the held-out ones; without it, it stays memorized. That delay is what the
workload measures.

Data: all p² pairs (a, b) (b ≠ 0 for div), labelled (a + b), (a − b), (a·b) or a·b⁻¹ mod p.
The train/validation split is a permutation from a generator seeded by `data.split_seed`
(default 0), independent of the run seed, so every run sees the same split. Every step is
the whole training set (full batch), so `batch(step)` is the same for every step and seed.

Models: "mlp" (default) embeds a and b (shared table, d_model), concatenates them, then
Linear(2·d_model, d_mlp) → ReLU → Linear(d_mlp, p); "transformer" is a
wdlab.nn.transformer.GPT on the tokens [a, b, "="] predicting the answer at the last
position, with every GPT option (norm, placement, qk_norm, ...) settable as model.*.

Target (val_accuracy >= 0.99): accuracy saturates at 1.0 once the model groks, so the
target is the conventional 99% and what calibration settles is the step budget. Measured
(benchmarks/calibrate_targets.py's loop, seed 0, AdamW lr 1e-3, betas (0.9, 0.98), wd 1.0,
100 warmup steps then constant): val accuracy 0 at step 500, 0.52 at 1,400, 0.993 at 2,200,
as in REFERENCE §7; the 3,000-step budget leaves ~35% slack. The grid
{(1e-3, 1.0), (3e-3, 0.3), (3e-3, 1.0)} x 3 seeds is in the script; see docs/workloads.md.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from wdlab.workloads.base import Batch, Section, Workload
from wdlab.workloads.charlm import GPTOptions

OPERATIONS = ("add", "sub", "mul", "div")


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


class ModelConfig(GPTOptions):
    """arch "mlp" uses d_model and d_mlp only; "transformer" uses all the GPT options."""

    arch: Literal["mlp", "transformer"] = "mlp"
    d_model: int = Field(default=128, ge=1)
    d_mlp: int | None = Field(default=512, ge=1)
    n_layer: int = Field(default=2, ge=1)
    tie_embeddings: bool = False


class DataConfig(Section):
    p: int = Field(default=97, ge=2)
    operation: Literal["add", "sub", "mul", "div"] = "add"
    train_fraction: float = Field(default=0.5, gt=0, lt=1)
    split_seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _prime_for_division(self) -> DataConfig:
        if self.operation == "div" and not _is_prime(self.p):
            raise ValueError(f"p={self.p} must be prime for operation 'div'; use e.g. p=97")
        return self


class _PairMLP(nn.Module):
    """Embedding of a and b (shared), concatenated, one hidden ReLU layer, logits over p."""

    def __init__(self, p: int, d_model: int, d_mlp: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(p, d_model)
        self.hidden = nn.Linear(2 * d_model, d_mlp)
        self.out = nn.Linear(d_mlp, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(self.embed(x).flatten(1))))


class _LastTokenGPT(nn.Module):
    """A GPT that returns the logits of the last position only: [B, T] -> [B, V]."""

    def __init__(self, gpt: nn.Module) -> None:
        super().__init__()
        self.gpt = gpt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gpt(x)[:, -1]


def make_pairs(p: int, operation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All operand pairs [N, 2] and their answers [N] for `operation` mod p."""
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T
    if operation == "div":
        keep = b != 0
        a, b = a[keep], b[keep]
        inverse = torch.tensor([0] + [pow(k, -1, p) for k in range(1, p)])
        y = (a * inverse[b]) % p
    elif operation == "add":
        y = (a + b) % p
    elif operation == "sub":
        y = (a - b) % p
    elif operation == "mul":
        y = (a * b) % p
    else:
        raise ValueError(f"operation must be one of {', '.join(OPERATIONS)}; got {operation!r}")
    return torch.stack([a, b], dim=1), y


class Grokking(Workload):
    """Modular arithmetic with a delayed generalization; metric val_accuracy, higher is better."""

    name = "grokking"
    metric = "val_accuracy"
    higher_is_better = True
    ModelConfig = ModelConfig
    DataConfig = DataConfig

    def __init__(self, model: ModelConfig, data: DataConfig, seed: int) -> None:
        super().__init__(model, data, seed)
        x, y = make_pairs(data.p, data.operation)
        gen = torch.Generator().manual_seed(data.split_seed)
        order = torch.randperm(len(y), generator=gen)
        n_train = int(round(data.train_fraction * len(y)))
        if not 0 < n_train < len(y):
            raise ValueError(
                f"data.train_fraction={data.train_fraction} leaves an empty split of "
                f"{len(y)} pairs; choose a fraction between 1/{len(y)} and 1 - 1/{len(y)}"
            )
        self.train_index, self.val_index = order[:n_train], order[n_train:]
        if model.arch == "transformer":  # tokens 0..p-1 are numbers, p is "="
            equals = torch.full((len(y), 1), data.p)
            x = torch.cat([x, equals], dim=1)
        self.x, self.y = x, y

    @classmethod
    def recipe(cls, tiny: bool = False) -> dict[str, Any]:
        if tiny:
            return {
                "steps": 400,
                "target": 0.95,
                "optimizer": {"name": "adamw", "lr": 1e-2, "weight_decay": 2.0,
                              "betas": [0.9, 0.98]},
                "schedule": {"kind": "constant", "warmup": 10},
                "train": {"eval_every": 20, "clip": None},
                "model": {"arch": "mlp", "d_model": 32, "d_mlp": 128},
                "data": {"p": 31, "train_fraction": 0.8},
            }
        return {
            "steps": 3000,
            "target": 0.99,
            "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1.0,
                          "betas": [0.9, 0.98]},
            "schedule": {"kind": "constant", "warmup": 100},
            "train": {"eval_every": 50, "clip": None},
            "model": ModelConfig().model_dump(),
            "data": DataConfig().model_dump(),
        }

    @property
    def width(self) -> int:
        return self.model_config.d_model

    def build_model(self) -> nn.Module:
        cfg, p = self.model_config, self.data_config.p
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if cfg.arch == "mlp":
                return _PairMLP(p, cfg.d_model, cfg.d_mlp or 4 * cfg.d_model)
            from wdlab.nn.transformer import GPT

            return _LastTokenGPT(GPT(cfg.gpt_config(vocab_size=p + 1, context=3)))

    def batch(self, step: int) -> Batch:
        return self.x[self.train_index], self.y[self.train_index]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        logits = model(x)
        if isinstance(model, _LastTokenGPT):
            return model.gpt.loss(logits, y)  # includes the z-loss when configured
        return nn.functional.cross_entropy(logits, y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from wdlab.monitor.probes import expected_calibration_error  # a pure tensor function

        val_logits, val_y = model(self.x[self.val_index]), self.y[self.val_index]
        train_logits, train_y = model(self.x[self.train_index]), self.y[self.train_index]
        return {
            "val_accuracy": (val_logits.argmax(-1) == val_y).float().mean().item(),
            "val_loss": nn.functional.cross_entropy(val_logits, val_y).item(),
            # memorization vs generalization; not "train_loss", which the engine logs per step
            "train_accuracy": (train_logits.argmax(-1) == train_y).float().mean().item(),
            # memorized, a model is confidently wrong on held-out pairs: high ECE until it groks
            "val_ece": expected_calibration_error(val_logits, val_y, from_logits=True),
        }

    def data_hash(self) -> str:
        digest = hashlib.sha256()
        cfg = self.data_config
        digest.update(f"grokking|p={cfg.p}|op={cfg.operation}|".encode())
        for tensor in (self.x[:, :2], self.y, self.train_index):
            digest.update(tensor.to(torch.int64).numpy().tobytes())
        return digest.hexdigest()
