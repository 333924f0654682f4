"""benchmarks/transfer.py: the regret bookkeeping, per-width lr grids and reuse of carried runs."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

from wdlab.store import Store

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer.py"


@pytest.fixture(scope="module")
def transfer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("transfer_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _argv(store: Path, rules: str) -> list[str]:
    return [
        "--workload", "teacher", "--widths", "8,16", "--steps", "3",
        "--lrs", "3e-3", "--lrs-at", "16=1e-3,2e-3", "--wds", "0.1",
        "--rules", rules, "--sweep-rules", "sp", "--workers", "1",
        "--store", str(store), "--json", str(store.with_suffix(".json")),
    ]


def _sweep_names(store: Path) -> list[str]:
    with Store(store) as s:
        return sorted(r.name for r in s.list_sweeps())


def test_regret_is_carried_minus_best_and_carried_runs_are_reused(
    transfer: ModuleType, tmp_path: Path
) -> None:
    store = tmp_path / "t.db"
    first = transfer.main(_argv(store, "sp,sp-lr"))
    names = _sweep_names(store)
    # width 16 is swept on its own lr axis, which lacks the carried lr 3e-3: so sp is
    # carried like any other rule
    assert "transfer grid 16 lrs 0.001,0.002" in names
    assert "transfer carried 16 sp,sp-lr" in names
    row = first["widths"]["16"]
    assert set(row["grid"]) == {"sp:0.001:0.1", "sp:0.002:0.1"}
    best = min([*row["grid"].values(), *row["carried_loss"].values()])
    assert row["best_loss"] == pytest.approx(best)
    for rule, loss in row["carried_loss"].items():
        assert math.isfinite(loss)
        assert row["regret"][rule] == pytest.approx(loss - best)
        assert row["relative_regret"][rule] == pytest.approx((loss - best) / best)

    # adding a rule runs that rule alone; the earlier carried results come back unchanged
    second = transfer.main([*_argv(store, "sp,sp-lr,sp-lr-all"), "--plot", str(tmp_path / "t.png")])
    assert (tmp_path / "t.png").read_bytes().startswith(b"\x89PNG")
    added = sorted(set(_sweep_names(store)) - set(names))
    assert added == ["transfer carried 16 sp-lr-all"]
    again = second["widths"]["16"]["carried_loss"]
    assert again["sp"] == row["carried_loss"]["sp"]
    assert again["sp-lr"] == row["carried_loss"]["sp-lr"]
    assert json.loads(store.with_suffix(".json").read_text())["widths"]["16"]["carried_loss"] == (
        again
    )


def test_lrs_at_must_name_a_width(transfer: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        transfer.parse_args(["--lrs-at", "1e-3,2e-3"])
