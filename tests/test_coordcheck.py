"""wdlab.coordcheck: the coord check is flat in width under mup and grows under sp."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from wdlab.coordcheck import (
    coord_check,
    coord_slopes,
    plot_coord_check,
    plot_singular_values,
    singular_value_check,
    top_singular_values,
)

torch.set_num_threads(1)

WIDTHS = (16, 32, 64, 128)


@pytest.fixture(scope="module")
def checks() -> dict[str, dict]:
    # tiny charlm (1 layer, d 16..128), 4 Adam steps at lr 1e-2, weight decay 0
    return {rule: coord_check("charlm", WIDTHS, steps=4, rule=rule, tiny=True, lr=1e-2)
            for rule in ("sp", "mup")}


def test_flat_under_mup_grows_under_sp(checks: dict[str, dict]) -> None:
    sp, mup = coord_slopes(checks["sp"]), coord_slopes(checks["mup"])
    assert set(sp) == set(mup) and "lm_head" in sp
    # sp with Adam: every entry moves by ~lr, so outputs of linears grow with width
    assert max(sp.values()) > 0.5 and sp["lm_head"] > 0.5
    # mup: no layer grows or shrinks like a power of the width
    assert max(abs(v) for v in mup.values()) < 0.25


def test_step_one_is_the_initialization(checks: dict[str, dict]) -> None:
    # at init, before any update, sp and mup differ only by the init/readout multipliers:
    # the embedding output is identical
    first = {rule: [row[0] for row in d["mean_abs"]["wte"]] for rule, d in checks.items()}
    assert first["sp"] == pytest.approx(first["mup"])
    for data in checks.values():
        assert len(data["mean_abs"]["wte"]) == len(WIDTHS)
        assert all(len(row) == 4 for row in data["mean_abs"]["wte"])


def test_coord_slopes_formula() -> None:
    data = {"widths": [8, 16, 32], "mean_abs": {"a": [[1.0], [2.0], [4.0]], "b": [[3.0]] * 3}}
    slopes = coord_slopes(data)
    assert slopes["a"] == pytest.approx(1.0) and slopes["b"] == pytest.approx(0.0)


def test_plots_are_written(checks: dict[str, dict], tmp_path: Path) -> None:
    path = plot_coord_check(checks["mup"], tmp_path / "coord.png")
    assert path.stat().st_size > 1000


def test_top_singular_values_against_svd() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 7), nn.ReLU(), nn.Linear(7, 2))
    got = top_singular_values(model)
    assert set(got) == {"2.weight"}  # neither the input nor the output layer is hidden
    expect = float(torch.linalg.svdvals(model[2].weight.detach().double())[0])
    assert got["2.weight"] == pytest.approx(expect, rel=1e-5)


def test_singular_value_check_runs(tmp_path: Path) -> None:
    data = singular_value_check("teacher", (16, 32), steps=5, rule="fan", tiny=True)
    assert data["widths"] == [16, 32] and all(len(v) == 2 for v in data["sigma"].values())
    assert all(math.isfinite(x) for v in data["sigma"].values() for x in v)
    assert plot_singular_values(data, tmp_path / "sv.png").exists()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="widths must be at least two"):
        coord_check("charlm", (32,), tiny=True)
    with pytest.raises(ValueError, match="rule must be one of"):
        coord_check("charlm", (16, 32), rule="xx", tiny=True)
