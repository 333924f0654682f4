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
