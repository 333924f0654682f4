"""wdlab inside Hugging Face's Trainer and Lightning, against the real packages: tiny models
built from configs (nothing downloaded), the optimizer's groups are wdlab.param_groups'
decision, training runs, and the Monitor's metrics arrive in the trainer's loggers."""

from __future__ import annotations

import csv
import glob
import os

import pytest
import torch

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


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, length: int = 8, vocab: int = 64) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _args(tmp_path, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=4,
                             per_device_train_batch_size=4, logging_steps=2, use_cpu=True,
                             save_strategy="no", disable_tqdm=True, seed=0,
                             dataloader_num_workers=0, **kw)


def test_hf_trainer_with_wdlab_optimizers_and_the_monitor(tmp_path) -> None:
    pytest.importorskip("accelerate")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer

    from wdlab.integrations import hf

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                       n_positions=16))
    expected = _decision(wdlab.param_groups(model, 1e-3, 0.1,
                                            example_input=hf.probe_input(model)))
    opt, sched = hf.optimizers(model, "adamw", lr=1e-3, weight_decay=0.1,
                               num_training_steps=4, warmup_steps=1)
    assert _decision(opt.param_groups) == expected
    assert isinstance(opt, wdlab.optim.AdamW)
    trainer = Trainer(model=model, args=_args(tmp_path, report_to=["tensorboard"]),
                      train_dataset=_Tokens(), optimizers=(opt, sched))
    hf.add_monitor(trainer, every=2, level="summary")
    trainer.train()

    measured = [h for h in trainer.state.log_history if "mon/w_norm/role:matrix" in h]
    assert [h["step"] for h in measured] == [2, 4]
    assert all(h["mon/upd_ratio/role:matrix"] > 0 for h in measured)
    # the lr of the measured step is the schedule's (warm-up 1, cosine over 4 steps)
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == [0.0] * len(lrs)  # the cosine reached 0 at step 4
    # ... and report_to's TensorBoard callback received the metrics through Trainer.log
    (events,) = {os.path.dirname(p) for p in glob.glob(
        str(tmp_path / "out" / "**" / "events.out.tfevents.*"), recursive=True)}
    acc = EventAccumulator(events)
    acc.Reload()
    tags = acc.Tags()["scalars"]
    tag = next(t for t in tags if t.endswith("mon/w_norm/role:matrix"))
    assert [e.step for e in acc.Scalars(tag)] == [2, 4]
    assert [e.value for e in acc.Scalars(tag)] == pytest.approx(
        [h["mon/w_norm/role:matrix"] for h in measured], rel=1e-6)


def test_hf_optimizer_cls_and_kwargs_on_llama_keeps_rmsnorm_gains_undecayed(tmp_path) -> None:
    pytest.importorskip("accelerate")
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer

    from wdlab.integrations import hf

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=2, vocab_size=64,
                                         max_position_embeddings=16))
    expected = _decision(wdlab.param_groups(model, 1e-3, 0.1,
                                            example_input=hf.probe_input(model)))
    trainer = Trainer(model=model, args=_args(tmp_path, report_to="none"),
                      train_dataset=_Tokens(),
                      optimizer_cls_and_kwargs=hf.optimizer_cls_and_kwargs(
                          model, "adamw", lr=1e-3, weight_decay=0.1))
    hf.add_monitor(trainer, every=2)
    trainer.create_optimizer()
    assert _decision(trainer.optimizer.param_groups) == expected
    decay = _names_by_decay(trainer.optimizer)
    gains = [n for n in decay if n.endswith("norm.weight")]
    assert len(gains) == 5 and all(decay[n] == 0.0 for n in gains)
    assert decay["model.layers.0.self_attn.q_proj.weight"] == 0.1
    trainer.train()
    per_tensor = [h for h in trainer.state.log_history
                  if "mon/angle/model.layers.1.mlp.down_proj.weight" in h]
    assert [h["step"] for h in per_tensor] == [2, 4]


def test_lightning_configure_optimizers_and_monitor_callback(tmp_path) -> None:
    L = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import CSVLogger

    from wdlab.integrations import lightning as wl

    class Net(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 16, bias=False),
                                            torch.nn.LayerNorm(16),
                                            torch.nn.ReLU(), torch.nn.Linear(16, 1))
            self.example_input_array = torch.randn(2, 4)

        def forward(self, x):
            return self.body(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self):
            return wl.configure_optimizers(self, "adamw", lr=1e-2, weight_decay=0.1,
                                           warmup_steps=1)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    net = Net()
    expected = _decision(wdlab.param_groups(net, 1e-2, 0.1,
                                            example_input=net.example_input_array))
    logger = CSVLogger(str(tmp_path), name="csv")
    trainer = L.Trainer(max_steps=4, logger=logger, callbacks=[wl.MonitorCallback(every=2)],
                        accelerator="cpu", devices=1, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=1)
    trainer.fit(net, torch.utils.data.DataLoader(data, batch_size=8))
    assert _decision(trainer.optimizers[0].param_groups) == expected
    assert any(si for _, si, _, _ in expected)  # the Linear before the LayerNorm
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r.get("mon/eff_lr/role:si")]
    assert [int(r["step"]) for r in rows] == [2, 4]
    # eff_lr = lr / ||w||^2 with the lr the measured step used (warm-up 1, cosine over 4)
    from wdlab.train import lr_multiplier

    for r in rows:
        step = int(r["step"])
        lr = 1e-2 * lr_multiplier(step - 1, 4, "cosine", 1)
        w = float(r["mon/w_norm/body.0.weight"])
        assert float(r["mon/eff_lr/body.0.weight"]) == pytest.approx(lr / w**2, rel=1e-5)
