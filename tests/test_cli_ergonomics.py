"""CLI ergonomics: whole ids, json/csv listings, sorting and --sweep, rm, compare, sweeps,
--print-config, --help's config keys, did-you-mean; the library defaults behind them
(create_optimizer's weight decay, aliases, groups.table); coordcheck's verdict; the plots
that put train and val together; the sweep progress's steps inside running trials.

Stores are filled through the Store API (no training), so the file stays fast."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from wdlab.cli import main
from wdlab.config import tomllib  # the stdlib one, or tomli on Python 3.10


@pytest.fixture()
def store_path(tmp_path: Path) -> Path:
    """Three runs (two in sweep 'grid', different lr and final metric), with metrics and
    a checkpoint folder each."""
    from wdlab.config import build_config
    from wdlab.store import Store

    path = tmp_path / "wdlab.db"
    base = build_config("teacher", tiny=True).to_dict()
    with Store(path) as store:
        sweep = store.create_sweep(spec={"workload": "teacher"}, name="grid")
        for i, (lr, mse) in enumerate([(3e-3, 0.2), (1e-2, 0.1), (1e-3, 0.3)]):
            config = {**base, "optimizer": {**base["optimizer"], "lr": lr}}
            run_id = store.create_run(workload="teacher", config=config, seed=0,
                                      name=f"<b>r{i}</b>", sweep_id=sweep if i < 2 else None)
            for step in (1, 2, 3):
                store.log_metrics(run_id, step, {"train_loss": mse * 4 / step + lr,
                                                 "val_mse": mse + 0.1 / step})
            store.update_run(run_id, status="finished", result={
                "status": "finished", "step": 3, "metric": "val_mse", "reached": False,
                "final_metrics": {"val_mse": mse}, "steps_to_target": None})
            folder = tmp_path / "wdlab-runs" / run_id
            folder.mkdir(parents=True)
            (folder / "last.pt").write_bytes(b"checkpoint")
    return path


def _ids(path: Path) -> list[str]:
    from wdlab.store import Store

    with Store(path) as store:
        return [r.id for r in store.list_runs()]


def _one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_runs_keeps_ids_whole_on_a_narrow_terminal_and_in_a_pipe(
    store_path: Path, capsys, monkeypatch
) -> None:
    from rich.console import Console

    from wdlab.cli import tables

    ids = _ids(store_path)
    assert main(["runs", "--store", str(store_path)]) == 0  # captured: a pipe
    piped = capsys.readouterr().out
    buffer = io.StringIO()
    monkeypatch.setattr(tables, "console", lambda stream=None: Console(
        file=buffer, width=40, force_terminal=True, highlight=False, color_system=None))
    assert main(["runs", "--store", str(store_path)]) == 0
    narrow = buffer.getvalue()
    for run_id in ids:
        assert run_id in piped
        assert any(run_id in line for line in narrow.splitlines()), narrow


def test_runs_json_csv_sort_and_sweep(store_path: Path, capsys) -> None:
    assert main(["runs", "--format", "json", "--sort", "lr", "--store", str(store_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["lr"] for r in rows] == [1e-3, 3e-3, 1e-2]
    assert sorted(r["id"] for r in rows) == sorted(_ids(store_path))
    assert main(["runs", "--format", "csv", "--sort", "metric", "--reverse", "--sweep", "grid",
                 "--store", str(store_path)]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [float(r["metric_value"]) for r in table] == [0.2, 0.1]  # only the sweep's two
    assert {r["name"] for r in table} == {"<b>r0</b>", "<b>r1</b>"}
    assert main(["sweeps", "--store", str(store_path)]) == 0
    assert "grid" in capsys.readouterr().out


def test_rm_deletes_rows_and_checkpoints_all_or_nothing(
    store_path: Path, capsys, monkeypatch
) -> None:
    root = store_path.parent / "wdlab-runs"
    ids = _ids(store_path)
    before = sorted(p.name for p in root.iterdir())
    # one unknown ref among good ones: an error, nothing removed
    line = _one_line_error(capsys, ["rm", ids[0], "nope", "--yes", "--store", str(store_path)])
    assert "'nope' is neither a run nor a sweep" in line
    # no terminal to confirm on and no --yes: refused
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert "--yes" in _one_line_error(capsys, ["rm", ids[0], "--store", str(store_path)])
    assert _ids(store_path) == ids and sorted(p.name for p in root.iterdir()) == before
    # a sweep takes its runs; the other run stays
    assert main(["rm", "grid", "--yes", "--store", str(store_path)]) == 0
    (left,) = _ids(store_path)
    assert [p.name for p in root.iterdir()] == [left]
    assert main(["rm", left[:5], "--yes", "--store", str(store_path)]) == 0
    assert _ids(store_path) == [] and list(root.iterdir()) == []
    from wdlab.store import Store

    with Store(store_path) as store:
        assert store.list_sweeps() == []


def test_compare_overlays_each_runs_curves(store_path: Path, capsys, monkeypatch) -> None:
    """The figure holds one line per run and metric with exactly the stored points; the
    labels name the setting in which the runs differ; the HTML escapes stored names."""
    from wdlab import report
    from wdlab.store import Store

    with Store(store_path) as store:
        runs = {r.id: store.metrics(r.id) for r in store.list_runs()}
    figures = []
    real_save = report._save
    monkeypatch.setattr(report, "_save", lambda fig, path: (figures.append(fig),
                                                             real_save(fig, path))[1])
    import wdlab.compare as compare_module

    monkeypatch.setattr(compare_module, "_save", report._save)
    out = store_path.parent / "c.png"
    assert main(["compare", *runs, "-o", str(out), "--store", str(store_path)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = figures
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert set(panels) == {"train_loss", "val_mse"}
    for metric, ax in panels.items():
        drawn = sorted([list(zip(line.get_xdata(), line.get_ydata(), strict=True))
                        for line in ax.get_lines()])
        assert drawn == sorted(runs[rid][metric] for rid in runs)
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert all("lr=" in label for label in labels), labels
    page = store_path.parent / "c.html"
    assert main(["compare", *list(runs)[:2], "-o", str(page), "--store", str(store_path)]) == 0
    html = page.read_text()
    assert "data:image/png;base64," in html and "<b>r0" not in html
    assert "at least two runs" in _one_line_error(
        capsys, ["compare", list(runs)[0], "--store", str(store_path)])


def test_print_config_is_toml_that_reads_back_and_writes_nothing(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from wdlab.config import build_config, validate

    monkeypatch.chdir(tmp_path)
    assert main(["run", "grokking", "--wd", "0.1", "--set", "model.d_model=64",
                 "--print-config"]) == 0
    tree = tomllib.loads(capsys.readouterr().out)
    expected = build_config("grokking", flags={"optimizer.weight_decay": 0.1},
                            assignments=["model.d_model=64"])
    assert validate(tree) == expected
    assert list(tmp_path.iterdir()) == []


def test_help_lists_config_keys_and_optimizer_hyperparameters(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "train.: eval_every=100" in text and "schedule.: " in text
    assert "kind=cosine" in text and "wd.kind=constant" in text  # nested: dotted keys
    assert "model.*, data.*: the workload's own" in text
    assert "adamw: lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01" in text
    assert "adam -> adamw (decay=l2)" in text


def test_help_reads_each_optimizers_signature_from_source_exactly() -> None:
    """The help reads signatures with ast (no torch at --help); it must agree with
    inspect.signature of the imported classes."""
    from wdlab import optim
    from wdlab.cli._config_help import source_hyperparameters

    for name, entry in optim.REGISTRY.items():
        assert source_hyperparameters(entry.module, entry.cls) == optim.hyperparameters(name)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["rnu", "grokking"], "did you mean 'run'?"),
        (["runs", "--sotr", "lr"], "did you mean '--sort'?"),
        (["run", "teacher", "--tiny", "--set", "train.eval_evry=5"], "did you mean 'eval_every'?"),
        (["run", "teacher", "--tiny", "--set", "model.widht=5"], "did you mean 'width'?"),
        (["run", "teacher", "--tiny", "--optimizer", "lino"], "did you mean 'lion'?"),
        (["run", "teachr", "--tiny"], "did you mean 'teacher'?"),
    ],
)
def test_typos_get_a_did_you_mean(tmp_path: Path, capsys, monkeypatch, argv, expected) -> None:
    monkeypatch.chdir(tmp_path)
    assert expected in _one_line_error(capsys, argv)
    assert list(tmp_path.iterdir()) == []


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 6, bias=False), nn.LayerNorm(6), nn.Linear(6, 3))


def _step(opt: torch.optim.Optimizer, model: nn.Module) -> None:
    torch.manual_seed(1)
    model(torch.randn(8, 6)).square().mean().backward()
    opt.step()


def test_omitted_weight_decay_is_the_optimizers_default_on_the_decayed_params() -> None:
    """create_optimizer(model, "adamw", lr) decays matrices like torch.optim.AdamW(lr)
    (0.01) and leaves the LayerNorm and biases undecayed."""
    from wdlab import create_optimizer

    ours, ref = _model(), _model()
    _step(create_optimizer(ours, "adamw", lr=0.1, probe=False), ours)
    matrices = [ref[0].weight, ref[2].weight]
    others = [ref[1].weight, ref[1].bias, ref[2].bias]
    _step(torch.optim.AdamW([{"params": matrices}, {"params": others, "weight_decay": 0.0}],
                            lr=0.1), ref)
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("alias", "torch_cls"), [("adam", torch.optim.Adam),
                                                  ("sgd", torch.optim.SGD),
                                                  ("adamw_torch", torch.optim.AdamW)])
def test_aliases_compute_what_torch_computes(alias: str, torch_cls: type) -> None:
    from wdlab import optim

    ours, ref = _model(), _model()
    _step(optim.create(alias, ours.parameters(), lr=0.05, weight_decay=0.1), ours)
    _step(torch_cls(ref.parameters(), lr=0.05, weight_decay=0.1), ref)
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_an_alias_in_a_config_is_stored_as_the_optimizer_it_names() -> None:
    from wdlab.config import build_config

    config = build_config("teacher", flags={"optimizer.name": "adam"}, tiny=True)
    assert (config.optimizer.name, config.optimizer.decay) == ("adamw", "l2")


def test_groups_table_prints_one_row_per_classified_parameter() -> None:
    import wdlab
    from wdlab.groups import table

    infos = wdlab.classify(_model(), example_input=torch.randn(4, 6))
    lines = table(infos).splitlines()
    assert lines[0].split() == ["name", "shape", "role", "module", "scale-inv.", "decay", "numel"]
    rows = [line.split() for line in lines[2:-1]]
    assert [r[0] for r in rows] == [i.name for i in infos]
    assert [r[2] for r in rows] == [i.role for i in infos]
    decayed = {i.name for i in infos if i.decay}
    assert {r[0] for r in rows if "yes" in r[4:]} >= decayed
    assert lines[-1].startswith(f"{sum(i.numel for i in infos):,} parameters")


def test_coordcheck_verdict() -> None:
    from wdlab.coordcheck import coord_verdict

    assert coord_verdict({"a": 0.05, "b": -0.1})[0]
    passed, line = coord_verdict({"a": 0.05, "b": 0.8, "c": -0.5})
    assert not passed and line.startswith("FAIL: 2 of 3 layers grow") and "b" in line


def test_eval_plot_draws_train_beside_val(tmp_path: Path, monkeypatch) -> None:
    from wdlab import report

    figures = []
    real_save = report._save
    monkeypatch.setattr(report, "_save", lambda fig, path: (figures.append((path.name, fig)),
                                                             real_save(fig, path))[1])
    val, train = [(10, 0.1), (20, 0.5)], [(10, 0.9), (20, 1.0)]
    report.plot_run({"val_accuracy": val, "train_accuracy": train, "train_loss": [(1, 2.0)]},
                    tmp_path)
    (fig,) = [f for name, f in figures if name == "eval.png"]
    (ax,) = fig.axes
    lines = {line.get_label(): list(zip(line.get_xdata(), line.get_ydata(), strict=True))
             for line in ax.get_lines()}
    assert lines == {"val_accuracy": val, "train_accuracy": train}


def test_sweep_progress_fields_for_running_trials() -> None:
    from wdlab.progress import RichProgress
    from wdlab.sweep.live import step_fields

    fields = step_fields({3: 120, 5: 40}, {1: 300, 3: 100})
    assert fields == {"trial 1 step": None, "trial 3 step": 120.0, "trial 5 step": 40.0}
    bar = RichProgress("sweep")
    bar.start(4, 0)
    try:
        bar.update(1, {"trial 1 step": 300.0})
        bar.update(1, fields)
        assert bar.latest == {"trial 3 step": 120.0, "trial 5 step": 40.0}
    finally:
        bar.stop()


def test_running_steps_reads_each_running_trials_last_logged_step(tmp_path: Path) -> None:
    from wdlab.store import Store
    from wdlab.sweep.live import running_steps

    with Store(tmp_path / "s.db") as store:
        sweep = store.create_sweep(spec={"workload": "teacher"}, trials=[{"a": 1}, {"a": 2}])
        trial = store.claim_trial(sweep, "host:1:w")
        run_id = store.create_run(workload="teacher", config={}, seed=0, sweep_id=sweep)
        store.heartbeat_trial(sweep, trial.trial_index, "host:1:w", run_id=run_id)
        for step in (1, 2, 7):
            store.log_metrics(run_id, step, {"train_loss": 1.0 / step})
        store.log_metrics(run_id, 10, {"val_mse": 0.5})  # an eval row is not a train step
        store.flush()
        assert running_steps(store, sweep) == {trial.trial_index: 7}
