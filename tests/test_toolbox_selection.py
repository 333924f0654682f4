"""`wdlab bench` and `wdlab sweep` select the toolbox's options; the HTML report labels them."""

from __future__ import annotations

import pytest

from wdlab import bench
from wdlab.errors import ConfigError
from wdlab.html_report import optimizer_label
from wdlab.optim.wrappers import CautiousUpdate
from wdlab.sweep import SweepSpec, run_sweep
from wdlab.sweep.spec import trial_config, validated_trials


def test_bench_variant_adds_its_settings_and_keeps_the_family_search_space() -> None:
    spec = bench._spec("lion+corrected+cautious+wsd-sqrt", "teacher", 2, 0, True)
    assert spec.name == "bench-quick-teacher-lion+corrected+cautious+wsd-sqrt-n2-s0"
    for setting in ("optimizer.decay=corrected", "optimizer.cautious=true", "schedule.kind=wsd",
                    "schedule.cooldown_shape=sqrt", "optimizer.betas=[0.9, 0.99]"):
        assert setting in spec.assignments
    assert spec.axes["optimizer.lr"].lo == bench.search_space("lion")[0][0]
    _, _, base, trials = validated_trials(spec)
    config = trial_config(base, trials[0], "t")
    assert (config.optimizer.name, config.optimizer.decay, config.optimizer.cautious) == (
        "lion", "corrected", True)
    assert (config.schedule.kind, config.schedule.cooldown_shape) == ("wsd", "sqrt")


def test_bench_unknown_variant_option_names_it(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown option 'fast' in 'adamw\\+fast'") as err:
        bench.run_bench(["adamw+fast"], ["teacher"], tmp_path / "b.db", trials=1, studies=1,
                        quick=True, workers=1)
    assert err.value.field == "optimizers" and not (tmp_path / "b.db").exists()


def test_sweep_axes_over_the_new_options_validate() -> None:
    spec = SweepSpec.create(workload="teacher", tiny=True, axes={
        "optimizer.decay": ["decoupled", "corrected"],
        "optimizer.decay_to": ["zero", "init", "ema"],
        "optimizer.cautious": [False, True],
        "schedule.kind": ["cosine", "wsd", "power"],
        "schedule.wd.kind": ["constant", "linear"],
    })
    _, _, base, trials = validated_trials(spec)
    assert len(trials) == 2 * 3 * 2 * 3 * 2
    config = trial_config(base, trials[-1], "t")
    assert (config.optimizer.decay_to, config.schedule.wd.kind) == ("ema", "linear")


def test_bad_option_in_a_sweep_names_the_field() -> None:
    spec = SweepSpec.create(workload="teacher", tiny=True,
                            axes={"optimizer.decay_to": ["zero", "origin"]})
    with pytest.raises(ConfigError, match="optimizer.decay_to"):
        validated_trials(spec)


def test_labels_name_the_variant() -> None:
    base = {"optimizer": {"name": "adamw", "decay": "decoupled", "cautious": True},
            "schedule": {"wd": {"kind": "constant"}}}
    assert optimizer_label({}, base) == "adamw cautious"
    params = {"optimizer.decay": "corrected", "optimizer.decay_to": "ema",
              "schedule.kind": "wsd", "schedule.wd.kind": "cosine"}
    assert optimizer_label(params, base) == (
        "adamw decay=corrected decay_to=ema cautious schedule.wd.kind=cosine schedule.kind=wsd")


def test_report_of_a_sweep_over_decay_modes_labels_each(tmp_path) -> None:
    from wdlab.html_report import build_report
    from wdlab.store import Store

    spec = SweepSpec.create(
        workload="teacher", tiny=True, assignments=["steps=20", "train.monitor=off"],
        axes={"optimizer.lr": [1e-3, 1e-2], "optimizer.decay": ["decoupled", "corrected"],
              "optimizer.weight_decay": [0.1]},
        name="modes",
    )
    summary = run_sweep(spec, tmp_path / "s.db", workers=1, progress=False)
    with Store(tmp_path / "s.db") as store:
        text = build_report(store, summary.sweep_id, tmp_path / "r.html").read_text()
    assert "<td>adamw decay=corrected wd=0.1</td>" in text
    assert "<td>adamw wd=0.1</td>" in text


def test_recipe_cautious_wraps_the_optimizer(tmp_path, monkeypatch) -> None:
    from wdlab import train
    from wdlab.config import build_config
    from wdlab.store import Store

    config = build_config("teacher", tiny=True, flags={"steps": 5}, assignments=[
        "train.monitor=off", "optimizer.cautious=true", "optimizer.weight_decay=0.1"])
    seen = []
    real = CautiousUpdate._wrapped_step

    def spy(self):
        seen.append(type(self.optimizer).__name__)
        return real(self)

    monkeypatch.setattr(CautiousUpdate, "_wrapped_step", spy)
    with Store(tmp_path / "s.db") as store:
        result = train.run(config, store, tmp_path / "runs")
    assert result.status == "finished" and seen == ["AdamW"] * 5


def test_gain_decay_pulls_norm_gains_toward_one_by_the_decay_formula() -> None:
    """optimizer.gain_decay: the vector groups (norm gains) get decay_to="one" at that rate;
    with zero gradients AdamW's step is the decay alone, g <- g - lr*rate*(g - 1)."""
    import torch

    from wdlab.factory import create_optimizer
    from wdlab.train import _decay_gains_to_one

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    with torch.no_grad():
        model[1].weight.fill_(3.0)
    opt = create_optimizer(model, "adamw", lr=0.1, weight_decay=0.0,
                           example_input=torch.randn(2, 4))
    _decay_gains_to_one(opt, 0.5)
    before = model[0].weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(model[1].weight, torch.full((4,), 3.0 - 0.1 * 0.5 * 2.0))
    assert torch.equal(model[0].weight, before)  # the matrix keeps its own (zero) decay


def test_gain_decay_on_an_optimizer_without_the_target_names_the_field(tmp_path) -> None:
    from wdlab import train
    from wdlab.config import build_config
    from wdlab.store import Store

    config = build_config("charlm", tiny=True, flags={"steps": 2}, assignments=[
        "optimizer.name=sf_adamw", "optimizer.gain_decay=0.1", "train.monitor=off"])
    with Store(tmp_path / "s.db") as store, pytest.raises(ConfigError) as err:
        train.run(config, store, tmp_path / "runs")
    assert err.value.field == "optimizer.gain_decay" and "decay_to='one'" in str(err.value)


def test_new_bench_options_select_and_label() -> None:
    spec = bench._spec("muon+per-head+qk-clip+gains-to-one+wd-linear", "charlm", 2, 0, True)
    for setting in ("model.muon_per_head=true", "model.qk_clip=100",
                    "optimizer.gain_decay=0.1", "schedule.wd.kind=linear"):
        assert setting in spec.assignments
    _, _, base, trials = validated_trials(spec)
    config = trial_config(base, trials[0], "t")
    model = config.model
    assert (model["qk_clip"], model["muon_per_head"], config.optimizer.gain_decay) == (
        100.0, True, 0.1)
    base_tree = {"optimizer": {"name": "muon", "gain_decay": 0.1},
                 "model": {"qk_clip": 100.0, "muon_per_head": True},
                 "schedule": {"kind": "wsd", "cooldown_shape": "sqrt"}}
    assert optimizer_label({}, base_tree) == (
        "muon gain_decay=0.1 qk_clip=100.0 muon_per_head "
        "schedule.kind=wsd schedule.cooldown_shape=sqrt")
    assert optimizer_label({}, {"schedule": {"kind": "cosine"}}) == "?"
