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


def _lrs(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> list[float]:
    """The lr each of `steps` optimizer steps uses (read before the scheduler steps)."""
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def _sgd(lr: float = 0.3) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_integration_schedule_is_every_wdlab_schedule() -> None:
    """The scheduler the HF and Lightning helpers build follows wdlab.schedules.Schedule for
    every kind and cooldown shape (values past the end included), cosine and power equal
    torch's CosineAnnealingLR and PolynomialLR, and a state_dict round trip continues."""
    from wdlab._names import COOLDOWN_SHAPES, SCHEDULE_KINDS
    from wdlab.integrations._schedule import lr_scheduler
    from wdlab.schedules import Schedule

    cases = [{"schedule": k} for k in SCHEDULE_KINDS if k != "wsd"]
    cases += [{"schedule": "wsd", "cooldown": 0.4, "cooldown_shape": s} for s in COOLDOWN_SHAPES]
    seen = set()
    for case in cases:
        opt = _sgd()
        sched = lr_scheduler(opt, 20, warmup_steps=3, final_lr_fraction=0.1, power=1.5, **case)
        want = Schedule(case["schedule"], 20, warmup=3, final=0.1,
                        cooldown=case.get("cooldown", 0.2),
                        shape=case.get("cooldown_shape", "linear"), power=1.5)
        got = _lrs(opt, sched, 25)
        assert got == pytest.approx([0.3 * want(t) for t in range(25)], rel=1e-12), case
        seen.add(tuple(round(v, 12) for v in got))
    assert len(seen) == len(cases)  # every kind and shape gives its own curve

    for ours, theirs in (
        (dict(schedule="cosine"), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 20)),
        (dict(schedule="power", power=2.0),
         lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=20, power=2.0)),
    ):
        a, b = _sgd(), _sgd()
        assert _lrs(a, lr_scheduler(a, 20, **ours), 20) == pytest.approx(
            _lrs(b, theirs(b), 20), rel=1e-9, abs=1e-15)

    opt = _sgd()
    sched = lr_scheduler(opt, 12, schedule="wsd", cooldown_shape="sqrt", warmup_steps=2)
    _lrs(opt, sched, 5)
    state = sched.state_dict()
    reference = _lrs(opt, sched, 7)
    again = _sgd()
    again.param_groups[0]["initial_lr"] = 0.3
    resumed = lr_scheduler(again, 12, schedule="wsd", cooldown_shape="sqrt", warmup_steps=2)
    resumed.load_state_dict(state)
    again.param_groups[0]["lr"] = resumed.get_last_lr()[0]
    assert _lrs(again, resumed, 7) == reference

    with pytest.raises(ValueError, match="schedule kind must be one of .*wsd.*'cosin'"):
        lr_scheduler(_sgd(), 10, schedule="cosin")
    with pytest.raises(ValueError, match="cooldown shape must be one of .*sqrt"):
        lr_scheduler(_sgd(), 10, schedule="wsd", cooldown_shape="root")
    with pytest.raises(ValueError, match="total_steps must be a positive integer"):
        lr_scheduler(_sgd(), 0)


def test_hf_and_lightning_helpers_take_wsd_and_schedule_objects() -> None:
    """hf.optimizers and lightning's configure_optimizers pass the schedule fields through
    (a 1 - sqrt cooldown here), and take a wdlab.schedules.Schedule as it is."""
    import lightning.pytorch as pl
    from transformers import GPT2Config, GPT2LMHeadModel

    from wdlab.integrations import hf
    from wdlab.integrations import lightning as wl
    from wdlab.schedules import Schedule

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16,
                                       n_positions=8))
    opt, sched = hf.optimizers(model, "adamw", lr=1e-2, num_training_steps=10, warmup_steps=2,
                               schedule="wsd", cooldown=0.5, cooldown_shape="sqrt",
                               final_lr_fraction=0.05)
    want = Schedule("wsd", 10, warmup=2, final=0.05, cooldown=0.5, shape="sqrt")
    assert _lrs(opt, sched, 12) == pytest.approx([1e-2 * want(t) for t in range(12)])

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
            self.example_input_array = torch.randn(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    given = Schedule("power", 8, warmup=1, power=3.0)
    out = wl.configure_optimizers(Net(), "sgdw", lr=0.1, schedule=given)  # no trainer needed
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert _lrs(opt, sched, 9) == pytest.approx([0.1 * given(t) for t in range(9)])
    out = wl.configure_optimizers(Net(), "sgdw", lr=0.1, total_steps=6, schedule="wsd",
                                  cooldown_shape="cosine")
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    want = Schedule("wsd", 6, shape="cosine")
    assert _lrs(opt, sched, 6) == pytest.approx([0.1 * want(t) for t in range(6)])
