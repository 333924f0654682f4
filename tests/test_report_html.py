"""The HTML report: self-contained, escapes user strings, heatmap cells in the right place."""

from __future__ import annotations

import math
import re
import statistics

import pytest

from wdlab.errors import WdlabError
from wdlab.html_report import TrialView, build_report, compare_optimizers, heatmap_grid, init_loss
from wdlab.store import Store
from wdlab.sweep import SweepSpec, run_sweep

EVIL = "<script>alert(1)</script>"


def _view(i, opt, lr, wd, seed=0, status="finished", value=None, steps=None):
    return TrialView(
        index=i,
        params={"optimizer.name": opt, "optimizer.lr": lr, "optimizer.weight_decay": wd,
                "seed": seed},
        status=status,
        optimizer=opt,
        lr=lr,
        wd=wd,
        seed=seed,
        metric_value=value,
        reached=steps is not None,
        steps_to_target=steps,
    )  # fmt: skip


def _fill_run(store: Store, name: str, config: dict) -> str:
    run_id = store.create_run(workload="teacher", config=config, seed=0, name=name)
    for step in range(1, 11):
        store.log_metrics(run_id, step, {"train_loss": 2.0 / step, "lr": 1e-3})
    store.log_metrics(run_id, 10, {"val_loss": 0.3, "val_mse": 0.25})
    store.update_run(run_id, status="failed", message=f"boom {EVIL}")
    return run_id


def test_run_report_escapes_user_strings_and_embeds_plots(tmp_path):
    with Store(tmp_path / "s.db") as store:
        run_id = _fill_run(store, EVIL, {"note": EVIL, "optimizer": {"name": "adamw"}})
        out = build_report(store, run_id, tmp_path / "run.html")
    text = out.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "boom &lt;script&gt;" in text  # the error message, escaped
    # plot_run's images, embedded and also written beside the report.
    files = sorted(p.name for p in (tmp_path / "run_files").iterdir())
    assert "loss.png" in files and "eval.png" in files and "lr.png" in files
    assert text.count("data:image/png;base64,") == len(files)
    assert not re.search(r'src="(?!data:)', text)  # nothing external
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file


def test_unknown_ref_and_bad_suffix(tmp_path):
    with Store(tmp_path / "s.db") as store:
        with pytest.raises(WdlabError, match="'nope' is neither a sweep nor a run"):
            build_report(store, "nope", tmp_path / "r.html")
        with pytest.raises(WdlabError, match="must end in .html"):
            build_report(store, "nope", tmp_path / "r.txt")


def test_sweep_report_of_a_tiny_sweep(tmp_path):
    spec = SweepSpec.create(
        workload="teacher",
        axes={"optimizer.lr": [1e-3, 1e-2], "optimizer.weight_decay": [0.0, 0.1]},
        assignments=["steps=40"],
        tiny=True,
        name=f"s-{EVIL}",
    )
    summary = run_sweep(spec, tmp_path / "s.db", workers=1, progress=False)
    with Store(tmp_path / "s.db") as store:
        out = build_report(store, summary.sweep_id, tmp_path / "sweep.html")
    text = out.read_text(encoding="utf-8")
    assert "<script" not in text.lower() and "s-&lt;script&gt;" in text
    pngs = sorted(p.name for p in (tmp_path / "sweep_files").iterdir())
    assert "curves.png" in pngs and "lr_sensitivity.png" in pngs
    assert any(n.startswith("heatmap_metric_value") for n in pngs)
    assert text.count("data:image/png;base64,") == len(pngs)
    rows = re.findall(r'<tr class="(\w+)">(.*?)</tr>', text)
    assert len(rows) == len(summary.trials) == 4
    for (status, row), trial in zip(rows, summary.trials, strict=True):
        assert status == trial.status
        assert f"<td>{trial.run_id}</td>" in row
        assert f"<td>{trial.final:.4g}</td>" in row
    # The LR-sensitivity table, recomputed from the store: ℓ0 = first train_loss, final
    # loss = the run's final val_loss, one line per weight decay.
    from wdlab.scoring import lr_sensitivity

    assert "<th>S</th>" in text
    with Store(tmp_path / "s.db") as store:
        for wd in (0.0, 0.1):
            trials = [t for t in summary.trials if t.params["optimizer.weight_decay"] == wd]
            runs = [store.get_run(t.run_id) for t in trials]
            l0 = statistics.fmean(store.metrics(r.id)["train_loss"][0][1] for r in runs)
            finals = [r.result["final_metrics"]["val_loss"] for r in runs]
            lrs = [t.params["optimizer.lr"] for t in trials]
            score = lr_sensitivity(lrs, finals, l0)
            line = f"<td>adamw wd={wd:.4g}</td><td>2</td><td>0.001..0.01</td><td>{l0:.4g}</td>"
            assert f"{line}<td>{score:.4g}</td>" in text


def test_heatmap_grid_puts_values_in_their_cells():
    trials = [
        _view(0, "adamw", 1e-3, 0.0, seed=0, value=0.5, steps=30),
        _view(1, "adamw", 1e-3, 0.0, seed=1, value=0.7, steps=50),
        _view(2, "adamw", 1e-2, 0.0, value=0.2, steps=10),
        _view(3, "adamw", 1e-2, 0.1, status="diverged"),
        _view(4, "adamw", 3e-2, 0.1, value=0.9),  # finished, not reached
        _view(5, "lion", 1e-4, 1.0, value=0.3, steps=20),
    ]
    grids = heatmap_grid(trials, "metric_value")
    assert sorted(grids) == ["adamw", "lion"]
    g = grids["adamw"]
    assert g.lrs == [1e-3, 1e-2, 3e-2] and g.wds == [0.0, 0.1]
    assert g.values[0][0] == pytest.approx(statistics.fmean([0.5, 0.7]))
    assert g.values[0][1] == 0.2
    assert math.isnan(g.values[0][2]) and g.labels[0][2] == "missing"
    assert math.isnan(g.values[1][0]) and g.labels[1][0] == "missing"
    assert math.isnan(g.values[1][1]) and g.labels[1][1] == "diverged"
    assert g.values[1][2] == 0.9
    steps = heatmap_grid(trials, "steps_to_target")["adamw"]
    assert steps.values[0][0] == 40.0 and steps.labels[1][2] == "not reached"
    assert grids["lion"].values == [[0.3]]


def test_init_loss_prefers_val_loss_at_step_zero():
    assert init_loss({"train_loss": [(2, 1.0), (1, 3.0)]}) == 3.0
    assert init_loss({"train_loss": [(1, 3.0)], "val_loss": [(0, 2.5), (5, 1.0)]}) == 2.5
    assert init_loss({}) is None


def test_compare_optimizers_claims_only_significant_wins():
    from wdlab.scoring import one_sided_test

    fast = [_view(i, "adamw", 1e-3, 0.1, seed=i, steps=s) for i, s in enumerate([10, 11, 12])]
    slow = [_view(3 + i, "lion", 1e-4, 1.0, seed=i, steps=s) for i, s in enumerate([30, 31, 33])]
    close = [_view(6 + i, "sgdw", 1e-2, 0.0, seed=i, steps=s) for i, s in enumerate([9, 14, 13])]
    cmp = compare_optimizers(fast + slow)
    assert cmp is not None and cmp.order == ["adamw", "lion"]
    p = one_sided_test([10, 11, 12], [30, 31, 33]).p_value
    assert p < 0.05 and "adamw beats lion" in cmp.statements[0]
    cmp = compare_optimizers(fast + close)
    assert cmp is not None
    p = one_sided_test([10, 11, 12], [9, 14, 13]).p_value
    assert p >= 0.05
    assert "no significant difference" in cmp.statements[0] and "beats" not in cmp.statements[0]
    assert f"p={p:.4g}" in cmp.statements[0]
    assert compare_optimizers(fast) is None
