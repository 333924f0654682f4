"""The optimizer registry: each entry's layout and prediction kind are ones the rest of wdlab
knows, and a new optimizer needs only its class and its entry."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import wdlab.optim
from wdlab.optim import REGISTRY, SGDW, Entry, entry_for
from wdlab.optim.equilibrium import KINDS, hyper_for
from wdlab.optim.memory import LAYOUTS, state_bytes


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_entry_names_known_parts(name: str) -> None:
    entry = REGISTRY[name]
    cls = entry.load()
    assert issubclass(cls, torch.optim.Optimizer) and wdlab.optim.get(name) is cls
    assert entry.state in LAYOUTS
    assert entry.equilibrium is None or entry.equilibrium in KINDS
    (lr_lo, lr_hi), (wd_lo, wd_hi) = entry.lr_range, entry.wd_range
    assert 0 < lr_lo < lr_hi and 0 < wd_lo < wd_hi
    group = {"params": [torch.nn.Parameter(torch.zeros(2, 2))], "role": "matrix"}
    assert entry_for(cls([group], lr=0.1)) is entry


class _HeavyBall(SGDW):
    """A user's optimizer: SGDW with a different name (its own class, its own entry)."""


def test_a_new_optimizer_is_its_class_and_its_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = Entry("heavyball", __name__, "_HeavyBall", "buffer", "sgdw", (1e-2, 1.0), (1e-5, 1e-3))
    monkeypatch.setitem(REGISTRY, "heavyball", entry)
    w = torch.nn.Parameter(torch.zeros(3, 4))
    opt: Any = wdlab.optim.create("heavyball", [w], lr=0.1, momentum=0.0, weight_decay=0.1)
    assert entry_for(opt) is entry  # the nearest registered class wins over SGDW's entry
    assert state_bytes(opt) == w.numel() * 4  # "buffer" layout, although momentum is 0
    hyper = hyper_for(opt, opt.param_groups[0])
    assert hyper is not None and hyper.kind == "sgdw" and hyper.lr == 0.1

    from wdlab.bench import search_space

    assert search_space("heavyball") == ((1e-2, 1.0), (1e-5, 1e-3))


def test_the_registry_imports_without_torch() -> None:
    # The CLI builds its parser from wdlab.bench, which reads the registry's search spaces.
    import subprocess
    import sys

    code = "import sys, wdlab.optim, wdlab.bench; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
