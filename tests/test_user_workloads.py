"""A user's own workload (docs/examples/digits_cnn.py, built with from_torch) goes through
run, resume, sweep (spawned workers), bench and report like a built-in one; a bad import
path is one line with a did-you-mean; an error in the user's code shows their traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wdlab.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "digits_cnn.py"
WORKLOAD = "digits_cnn:DigitsCNN"

BROKEN = '''
import torch
from torch import nn
from wdlab.workloads import Workload


class Broken(Workload):
    metric = "val_accuracy"
    higher_is_better = True

    @classmethod
    def recipe(cls, tiny=False):
        return {"steps": 5, "optimizer": {"name": "adamw", "lr": 1e-3}}

    def build_model(self):
        return nn.Linear(4, 2)

    def batch(self, step):
        return torch.ones(8, 4), torch.zeros(8, dtype=torch.long)

    def loss(self, model, batch):
        return helper(model, batch)

    def evaluate(self, model):
        return {"val_accuracy": 0.0}

    def data_hash(self):
        return "x"


def helper(model, batch):
    raise ZeroDivisionError("user bug here")


class BadForward(Broken):
    def build_model(self):
        return Mismatch()


class Mismatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(x.reshape(3, -1))  # the user's shape bug
'''


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding the example and a broken module, as the current directory, with
    sys.path and sys.modules restored afterwards."""
    shutil.copy(EXAMPLE, tmp_path / "digits_cnn.py")
    (tmp_path / "broken.py").write_text(BROKEN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("digits_cnn", "broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield tmp_path
    for name in ("digits_cnn", "broken"):
        sys.modules.pop(name, None)


def _series(store_path: Path, run_id: str) -> dict:
    from wdlab.store import Store

    with Store(store_path) as store:
        return store.metrics(run_id)


def _only_run(store_path: Path, **filters) -> object:
    from wdlab.store import Store

    with Store(store_path) as store:
        (rec,) = store.list_runs(**filters)
        return rec


def test_run_resume_equals_uninterrupted_and_report(project: Path, capsys) -> None:
    """24 tiny steps, 21 batches per epoch: the resume at 13 is mid-epoch one, and the run
    crosses into epoch two; the resumed metrics equal an uninterrupted run's exactly."""
    whole, split = project / "whole.db", project / "split.db"
    base = [WORKLOAD, "--tiny", "--quiet", "--set", "train.stop_at_target=false",
            "--set", "schedule.kind=constant"]  # the lr does not depend on the budget
    assert main(["run", *base, "--store", str(whole)]) == 0
    assert main(["run", *base, "--steps", "13", "--store", str(split)]) == 0
    first = _only_run(split)
    assert first.workload == WORKLOAD  # the import path is what the store keeps
    assert main(["run", "--resume", first.id, "--steps", "24", "--quiet",
                 "--store", str(split)]) == 0
    full = _only_run(whole)
    resumed = _only_run(split)
    assert resumed.result["step"] == full.result["step"] == 24
    a, b = _series(whole, full.id), _series(split, resumed.id)
    assert a["train_loss"] == b["train_loss"]  # bit-identical, batch for batch
    resumed_evals = dict(b["val_accuracy"])  # plus the evaluation at the end of step 13
    assert [(step, resumed_evals[step]) for step, _ in a["val_accuracy"]] == a["val_accuracy"]
    assert "val_ece" in a  # the example's extra eval metric is stored like any other
    capsys.readouterr()
    assert main(["report", resumed.id, "-o", str(project / "run.html"),
                 "--store", str(split)]) == 0
    html = (project / "run.html").read_text()
    assert WORKLOAD in html and "val_accuracy" in html


def test_sweep_workers_and_bench_import_the_users_module(project: Path) -> None:
    """`wdlab sweep` with two spawned workers (a real subprocess: the console path, the
    current directory found by the workers too), then the sweep's report and a one-trial
    bench on the same workload."""
    store = project / "wdlab.db"
    cmd = [sys.executable, "-m", "wdlab", "sweep", WORKLOAD, "--tiny", "--lr", "1e-2,3e-2",
           "--workers", "2", "--quiet", "--name", "cnn", "--store", str(store)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=project)
    assert done.returncode == 0, done.stderr
    from wdlab.store import Store

    with Store(store) as s:
        (sweep,) = s.list_sweeps()
        trials = s.trials(sweep.id)
        assert sorted(t.status for t in trials) == ["finished", "finished"]
        runs = s.list_runs(sweep_id=sweep.id)
        assert {r.workload for r in runs} == {WORKLOAD}
        assert sorted(r.config["optimizer"]["lr"] for r in runs) == [1e-2, 3e-2]
    assert main(["report", "cnn", "-o", str(project / "sweep.html"), "--store", str(store)]) == 0
    assert "val_accuracy" in (project / "sweep.html").read_text()
    bench_store = project / "bench.db"
    assert main(["bench", "--workloads", WORKLOAD, "--optimizers", "adamw", "--quick",
                 "--trials", "1", "--studies", "1", "--measure", "steps", "--quiet",
                 "--out-dir", str(project), "--store", str(bench_store)]) == 0
    assert _only_run(bench_store).workload == WORKLOAD


@pytest.mark.parametrize(
    ("workload", "expected"),
    [
        ("digits_cmn:DigitsCNN", "did you mean 'digits_cnn'?"),
        ("digits_cnn:DigitsCnn", "did you mean 'DigitsCNN'?"),
        ("digits_cnn:cnn", "not a Workload class"),
        ("digits-cnn:DigitsCNN", "not an import path"),
        ("grokkin", "did you mean 'grokking'?"),
    ],
)
def test_a_bad_workload_path_is_one_line_with_a_suggestion(
    project: Path, capsys, workload: str, expected: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", workload, "--tiny", "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (project / "wdlab.db").exists()  # nothing written


@pytest.mark.parametrize(
    ("workload", "frame", "kind", "where"),
    [
        ("broken:Broken", "in helper", "ZeroDivisionError", "in loss()"),
        ("broken:BadForward", "in forward", "RuntimeError", "grouping probe"),
    ],
)
def test_an_error_in_user_code_shows_their_traceback(
    project: Path, capsys, workload: str, frame: str, kind: str, where: str
) -> None:
    """Their frames (file, line, function), then one wdlab line naming the method; no wdlab
    frame in between, exit code 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(["run", workload, "--quiet", "--store", str(project / "w.db")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert f'{project / "broken.py"}"' in err and frame in err
    assert "wdlab/train.py" not in err and "wdlab/workloads" not in err
    assert lines[-1].startswith(f"wdlab: error: your workload {workload} raised {kind}")
    assert where in lines[-1] and "broken.py:" in lines[-1]


def test_from_torch_batches_are_a_pure_function_of_seed_and_step(project: Path) -> None:
    """Asked out of order (as a resume does), every step gives the batch a straight pass
    gave; another seed shuffles differently; the global torch RNG is left untouched."""
    import torch

    from wdlab import workloads
    from wdlab.config import build_config

    def stream(seed: int):
        return workloads.from_config(build_config(WORKLOAD, tiny=True), seed=seed)

    torch.manual_seed(123)
    before = torch.get_rng_state()
    sequential = stream(0)
    straight = [sequential.batch(s) for s in range(45)]  # two epochs and a bit
    assert torch.equal(torch.get_rng_state(), before)
    work = stream(0)
    for step in (30, 3, 44, 21, 0):
        x, y = work.batch(step)
        assert torch.equal(x, straight[step][0]) and torch.equal(y, straight[step][1])
    assert not torch.equal(straight[0][1], straight[21][1])  # epoch two is reshuffled
    assert not torch.equal(stream(1).batch(0)[1], straight[0][1])


def test_width_rules_take_the_users_width(project: Path, capsys) -> None:
    """optimizer.scaling uses the workload's declared width (from_torch: width="channels");
    a workload that declares none gets one line saying so."""
    scaled = ["--set", "optimizer.scaling=mup", "--set", "optimizer.base_width=4",
              "--steps", "2", "--quiet", "--store", str(project / "s.db")]
    assert main(["run", WORKLOAD, "--tiny", *scaled]) == 0
    assert _only_run(project / "s.db").config["optimizer"]["scaling"] == "mup"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["run", "broken:Broken", *scaled])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "declares no width" in line


def test_a_failed_run_and_sweep_trial_keep_the_users_traceback(project: Path, capsys) -> None:
    """A run that fails in the user's code keeps their frames beside the one-line message,
    for a plain `wdlab run` and for a sweep trial alike (the trial's error stays one line);
    `wdlab show RUN` prints them."""
    from wdlab.store import Store

    store = project / "w.db"
    with pytest.raises(SystemExit):
        main(["run", "broken:Broken", "--quiet", "--store", str(store)])
    assert main(["sweep", "broken:Broken", "--lr", "1e-3,2e-3", "--workers", "1", "--quiet",
                 "--name", "bad", "--store", str(store)]) in (0, 1)
    with Store(store) as s:
        (sweep,) = s.list_sweeps()
        trials = s.trials(sweep.id)
        runs = [s.get_run(t.run_id) for t in trials]
        plain = [r for r in s.list_runs() if r.sweep_id is None]
    assert [t.status for t in trials] == ["failed", "failed"]
    assert all("\n" not in t.error and "user bug here" in t.error for t in trials)
    for record in [*plain, *runs]:
        text = record.result["traceback"]
        assert text.startswith("Traceback (most recent call last):")
        assert f'{project / "broken.py"}"' in text and "in helper" in text
        assert "wdlab/train.py" not in text  # the user's frames only
        assert text.rstrip().endswith("ZeroDivisionError: user bug here")
        assert "\n" not in record.message
    capsys.readouterr()
    assert main(["show", runs[0].id, "--no-plots", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "  traceback\n" in out and "in helper" in out
    assert "    ZeroDivisionError: user bug here" in out
    page = project / "failed.html"
    assert main(["report", runs[0].id, "-o", str(page), "--store", str(store)]) == 0
    html = page.read_text()
    assert "<h2>Traceback</h2>" in html and "ZeroDivisionError: user bug here" in html
    assert "in helper" in html and f"{project / 'broken.py'}&quot;" in html  # escaped
    finished = project / "ok.db"
    assert main(["run", WORKLOAD, "--tiny", "--steps", "2", "--quiet", "--store",
                 str(finished)]) == 0
    assert "traceback" not in _only_run(finished).result  # only failed runs carry one
