"""wdlab inside Hugging Face's Trainer and Lightning, against the real packages: the
snippets of docs/integrations.md, run exactly as written (tiny models built from configs,
nothing downloaded); then the optimizer's groups are wdlab.param_groups' decision, training
ran, and the Monitor's metrics arrived in the trainer's loggers."""

from __future__ import annotations

import csv
import glob
import os

import pytest
import torch
from doc_snippets import snippet

import wdlab

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _decision(groups) -> set:
    """What a grouping decided: (role, scale_invariant, weight_decay, names) per group."""
    return {(g["role"], bool(g["scale_invariant"]), float(g["weight_decay"]),
             tuple(sorted(g["param_names"]))) for g in groups}


def _names_by_decay(optimizer) -> dict[str, float]:
    return {n: g["weight_decay"] for g in optimizer.param_groups for n in g["param_names"]}


def test_hf_trainer_snippets(tmp_path, monkeypatch, capsys) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from wdlab.integrations import hf

    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(snippet("hf-trainer"), "hf-trainer", "exec"), ns)
    model, trainer = ns["model"], ns["trainer"]
    expected = _decision(wdlab.param_groups(model, 1e-3, 0.1,
                                            example_input=hf.probe_input(model)))
    assert _decision(trainer.optimizer.param_groups) == expected
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper
    assert isinstance(inner, wdlab.optim.AdamW)
    measured = [h for h in trainer.state.log_history if "mon/w_norm/role:matrix" in h]
    assert [h["step"] for h in measured] == [2, 4]
    assert all(h["mon/upd_ratio/role:matrix"] > 0 for h in measured)
    assert not [k for h in measured for k in h if ".weight" in k]  # summary level
    assert "mon/w_norm" in capsys.readouterr().out
    # the schedule: warm-up 1 step, then cosine to 0 at step 4
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.0] * len(expected)
    # report_to's TensorBoard callback received the metrics through Trainer.log
    (events,) = {os.path.dirname(p) for p in glob.glob(
        str(tmp_path / "hf-out" / "**" / "events.out.tfevents.*"), recursive=True)}
    acc = EventAccumulator(events)
    acc.Reload()
    tag = next(t for t in acc.Tags()["scalars"] if t.endswith("mon/w_norm/role:matrix"))
    assert [e.step for e in acc.Scalars(tag)] == [2, 4]
    assert [e.value for e in acc.Scalars(tag)] == pytest.approx(
        [h["mon/w_norm/role:matrix"] for h in measured], rel=1e-6)

    exec(compile(snippet("hf-cls-and-kwargs"), "hf-cls-and-kwargs", "exec"), ns)
    model, trainer = ns["model"], ns["trainer"]
    expected = _decision(wdlab.param_groups(model, 1e-3, 0.1,
                                            example_input=hf.probe_input(model)))
    assert _decision(trainer.optimizer.param_groups) == expected
    decay = _names_by_decay(trainer.optimizer)
    gains = [n for n in decay if n.endswith("norm.weight")]
    assert len(gains) == 5 and all(decay[n] == 0.0 for n in gains)  # RMSNorm: not decayed
    assert decay["model.layers.0.self_attn.q_proj.weight"] == 0.1
    per_tensor = [h for h in trainer.state.log_history
                  if "mon/angle/model.layers.1.mlp.down_proj.weight" in h]
    assert [h["step"] for h in per_tensor] == [2, 4]


def test_lightning_snippet(tmp_path, monkeypatch) -> None:
    from wdlab.train import lr_multiplier

    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(snippet("lightning"), "lightning", "exec"), ns)
    net, trainer = ns["net"], ns["trainer"]
    expected = _decision(wdlab.param_groups(net, 1e-2, 0.1,
                                            example_input=net.example_input_array))
    assert _decision(trainer.optimizers[0].param_groups) == expected
    assert ("matrix", True, 0.1, ("body.0.weight",)) in expected  # Linear before LayerNorm
    with open(os.path.join(trainer.logger.log_dir, "metrics.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r.get("mon/eff_lr/role:si")]
    assert [int(r["step"]) for r in rows] == [2, 4]
    for r in rows:  # eff_lr = lr / ||w||^2 with the lr the measured step used
        lr = 1e-2 * lr_multiplier(int(r["step"]) - 1, 4, "cosine", 1)
        w = float(r["mon/w_norm/body.0.weight"])
        assert float(r["mon/eff_lr/body.0.weight"]) == pytest.approx(lr / w**2, rel=1e-5)


def test_hf_probe_input_without_dummy_inputs() -> None:
    from wdlab.integrations import hf

    class Bare(torch.nn.Module):
        config = type("C", (), {"vocab_size": 11, "max_position_embeddings": 5})()

        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(11, 4)

    x = hf.probe_input(Bare())["input_ids"]
    assert x.shape == (2, 5) and int(x.max()) < 11
    with pytest.raises(ValueError, match="example_input"):
        hf.probe_input(torch.nn.Linear(2, 2))
