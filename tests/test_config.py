"""Run configuration: precedence of recipe, file, flags and --set; one-line errors."""

from __future__ import annotations

import pytest

from wdlab.config import build_config, parse_value
from wdlab.errors import ConfigError
from wdlab.workloads import get


def test_recipe_is_the_base_and_flags_override_it() -> None:
    recipe = get("teacher").recipe()
    config = build_config("teacher")
    assert config.optimizer.lr == pytest.approx(recipe["optimizer"]["lr"])
    assert config.steps == recipe["steps"]
    config = build_config("teacher", flags={"optimizer.lr": 0.5, "steps": 7, "seed": 3})
    assert (config.optimizer.lr, config.steps, config.seed) == (0.5, 7, 3)


def test_precedence_file_then_flags_then_set(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('steps = 11\n[optimizer]\nlr = 0.25\nname = "sgdw"\n')
    config = build_config("teacher", file=path)
    assert (config.steps, config.optimizer.lr, config.optimizer.name) == (11, 0.25, "sgdw")
    config = build_config("teacher", file=path, flags={"steps": 12})
    assert config.steps == 12
    config = build_config("teacher", file=path, flags={"steps": 12}, assignments=["steps=13"])
    assert config.steps == 13


def test_set_parses_toml_literals() -> None:
    assert parse_value("1e-3") == pytest.approx(1e-3)
    assert parse_value("true") is True
    assert parse_value("[0.9, 0.95]") == [0.9, 0.95]
    assert parse_value("peri") == "peri"
    assert parse_value('"quoted"') == "quoted"
    config = build_config("teacher", assignments=["optimizer.betas=[0.8, 0.9]"])
    assert config.optimizer.hyperparameters()["betas"] == (0.8, 0.9)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"flags": {"optimizer.lr": -1.0}}, "optimizer.lr"),
        ({"flags": {"steps": 0}}, "steps"),
        ({"assignments": ["schedule.kind=zigzag"]}, "schedule.kind"),
        ({"assignments": ["train.eval_evry=5"]}, "train.eval_evry"),
        ({"assignments": ["data.no_such_key=1"]}, "data.no_such_key"),
        ({"assignments": ["optimizer.decay=weird"]}, "optimizer.decay"),
    ],
)
def test_errors_name_the_field(kwargs, field) -> None:
    with pytest.raises(ConfigError) as info:
        build_config("teacher", **kwargs)
    message = str(info.value)
    assert field in message
    assert "\n" not in message
    assert info.value.field == field


def test_unknown_workload_and_bad_set_syntax(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown workload 'nope'.*grokking"):
        build_config("nope")
    with pytest.raises(ConfigError, match="key=value"):
        build_config("teacher", assignments=["steps"])
    with pytest.raises(ConfigError, match="not found"):
        build_config("teacher", file=tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_config("teacher", file=bad)


def test_switching_optimizer_drops_the_recipes_optimizer_specific_settings() -> None:
    recipe = get("teacher").recipe()["optimizer"]
    assert "betas" in recipe  # the recipe is AdamW's
    config = build_config("teacher", flags={"optimizer.name": "sgdw"})
    assert "betas" not in config.optimizer.hyperparameters()
    assert config.optimizer.lr == pytest.approx(recipe["lr"])
    config = build_config("teacher", flags={"optimizer.name": "lion"},
                          assignments=["optimizer.betas=[0.9, 0.99]"])
    assert config.optimizer.hyperparameters()["betas"] == (0.9, 0.99)
    assert "betas" in build_config("teacher", flags={"optimizer.name": "adamw"}).model_dump()[
        "optimizer"]
