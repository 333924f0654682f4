"""A small CNN on scikit-learn's bundled 8x8 digits, as a wdlab workload (docs/your-model.md).

Run it from this folder (or put the folder on PYTHONPATH):

    wdlab run digits_cnn:DigitsCNN --tiny
    wdlab sweep digits_cnn:DigitsCNN --tiny --grid optimizer.lr=1e-3,3e-3 --seeds 0
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wdlab.monitor import expected_calibration_error
from wdlab.workloads import from_torch


def _split() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """1,797 images: a fixed permutation (seed 0), 1,400 to train, the rest to validate."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = order[:1400], order[1400:]
    return (x[train], y[train]), (x[val], y[val])


TRAIN, VAL = _split()


def cnn(channels: int = 16) -> nn.Module:
    """Two 3x3 conv blocks (BatchNorm, ReLU), global average pooling, a linear head."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * channels), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * channels, 10),
    )


def train_loader(batch_size: int = 64) -> DataLoader:
    """Shuffled minibatches; wdlab seeds the shuffle per epoch from (seed, epoch)."""
    return DataLoader(TensorDataset(*TRAIN), batch_size=batch_size, shuffle=True, drop_last=True)


def evaluate(model: nn.Module) -> dict[str, float]:
    """Accuracy (the target's metric), loss and calibration on the held-out images."""
    logits = model(VAL[0])
    return {
        "val_accuracy": (logits.argmax(1) == VAL[1]).float().mean().item(),
        "val_loss": nn.functional.cross_entropy(logits, VAL[1]).item(),
        "val_ece": expected_calibration_error(logits, VAL[1]),
    }


DigitsCNN = from_torch(
    cnn,
    train_loader,
    evaluate,
    metric="val_accuracy",
    higher_is_better=True,
    target=0.95,
    steps=400,
    lr=1e-2,
    weight_decay=0.05,
    eval_every=50,
    model_options={"channels": 16},
    data_options={"batch_size": 64},
    width="channels",
    tiny={"steps": 24, "target": 0.25, "optimizer": {"lr": 3e-2},
          "train": {"eval_every": 12, "threads": 1},
          "model": {"channels": 8}},
)
