"""The training engine: tiny targets, exact resume (in process and after SIGKILL),
non-finite losses. (Ctrl-C on a real `wdlab run`: tests/test_cli.py.)"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wdlab import cli, train, workloads
from wdlab.config import build_config
from wdlab.errors import ConfigError, WdlabError
from wdlab.store import Store
from wdlab.workloads.teacher import Teacher

NO_MONITOR = ["train.monitor=off"]


def _config(*assignments: str, **flags):
    return build_config(
        "teacher", tiny=True, flags=flags, assignments=[*NO_MONITOR, *assignments]
    )


def _final_params(runs_root: Path, run_id: str) -> dict[str, torch.Tensor]:
    payload = torch.load(runs_root / run_id / "last.pt", weights_only=True)
    return payload["model"]


@pytest.mark.parametrize("name", workloads.available())
def test_tiny_recipe_reaches_its_tiny_target(name, tmp_path) -> None:
    config = build_config(name, tiny=True, assignments=NO_MONITOR)
    with Store(tmp_path / "s.db") as store:
        result = train.run(config, store, tmp_path / "runs")
        record = store.get_run(result.run_id)
        metrics = store.metrics(result.run_id)
    assert result.reached, f"{name}: {result.final_metrics} vs target {result.target}"
    assert result.steps_to_target is not None and result.steps_to_target <= config.steps
    assert record.status == "finished" and record.result["reached"] is True
    assert record.data_hash
    assert "train_loss" in metrics and cls_metric(name) in metrics


def cls_metric(name: str) -> str:
    return workloads.get(name).metric


def test_same_seed_same_result_and_lr_follows_schedule(tmp_path) -> None:
    config = _config("train.stop_at_target=false", "schedule.warmup=5", "schedule.kind=cosine",
                     steps=40)
    with Store(tmp_path / "s.db") as store:
        a = train.run(config, store, tmp_path / "runs")
        b = train.run(config, store, tmp_path / "runs")
        lrs = dict(store.metrics(a.run_id)["lr"])
    for key, value in _final_params(tmp_path / "runs", a.run_id).items():
        assert torch.equal(value, _final_params(tmp_path / "runs", b.run_id)[key]), key
    peak = config.optimizer.lr
    assert lrs[1] == pytest.approx(peak / 5)  # step 0 of warm-up: 1/5 of the peak
    assert lrs[5] == pytest.approx(peak)
    assert lrs[40] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 34 / 35)))


def test_wd_schedule_is_independent_of_the_lr_schedule(tmp_path) -> None:
    config = _config("train.stop_at_target=false", "schedule.kind=wsd", "schedule.cooldown=0.5",
                     "schedule.cooldown_shape=cosine", "schedule.wd.kind=linear",
                     "schedule.wd.final=0.5", "optimizer.weight_decay=0.2", steps=20)
    with Store(tmp_path / "s.db") as store:
        result = train.run(config, store, tmp_path / "runs")
        lrs = dict(store.metrics(result.run_id)["lr"])
    peak = config.optimizer.lr
    assert lrs[10] == pytest.approx(peak) and lrs[11] == pytest.approx(peak)  # stable to 10
    assert lrs[16] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    saved = torch.load(tmp_path / "runs" / result.run_id / "last.pt", weights_only=True)
    decaying = [g for g in saved["optimizer"]["param_groups"] if g["initial_weight_decay"] > 0]
    assert decaying
    for g in decaying:  # the last step (19) is 19/20 of the way from 1 to 0.5
        assert g["weight_decay"] == pytest.approx(g["initial_weight_decay"] * (1 - 0.5 * 19 / 20))
        assert g["lr"] == pytest.approx(g["initial_lr"] * 0.5 * (1 + math.cos(math.pi * 9 / 10)))


def test_lr_multiplier_shapes() -> None:
    assert train.lr_multiplier(0, 100, "constant", 0) == 1.0
    assert train.lr_multiplier(9, 100, "linear", 10) == pytest.approx(1.0)
    assert train.lr_multiplier(55, 100, "linear", 10) == pytest.approx(0.5)
    assert train.lr_multiplier(55, 100, "cosine", 10) == pytest.approx(0.5)
    assert train.lr_multiplier(100, 100, "cosine", 10, final=0.1) == pytest.approx(0.1)


TOOLBOX = ("schedule.kind=wsd", "schedule.cooldown_shape=sqrt", "schedule.wd=linear",
           "optimizer.weight_decay=0.1", "optimizer.decay=corrected", "optimizer.decay_to=ema")


@pytest.mark.parametrize("extra", [(), TOOLBOX], ids=["plain", "toolbox"])
def test_resume_in_process_equals_uninterrupted(tmp_path, monkeypatch, extra) -> None:
    config = _config("train.stop_at_target=false", "train.checkpoint_every=10", *extra, steps=30)
    with Store(tmp_path / "s.db") as store:
        full = train.run(config, store, tmp_path / "runs")

        real_batch = Teacher.batch

        def crash_at_17(self, step):
            if step == 17:
                raise RuntimeError("simulated crash")
            return real_batch(self, step)

        monkeypatch.setattr(Teacher, "batch", crash_at_17)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train.run(config, store, tmp_path / "runs")
        crashed = store.list_runs()[0]
        assert crashed.status == "failed"
        ckpt = torch.load(tmp_path / "runs" / crashed.id / "last.pt", weights_only=True)
        assert ckpt["step"] == 10
        monkeypatch.setattr(Teacher, "batch", real_batch)

        run_id, resumed_config = train.resume_config(store, crashed.id)
        resumed = train.run(resumed_config, store, tmp_path / "runs", resume_id=run_id)
        assert resumed.status == "finished" and resumed.step == 30
    expected = _final_params(tmp_path / "runs", full.run_id)
    got = _final_params(tmp_path / "runs", resumed.run_id)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def _wdlab(*args: str, store: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "wdlab.cli", *args, "--store", str(store), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs,
    )


def _wait_for_checkpoint(runs_root: Path, proc: subprocess.Popen, timeout: float = 300) -> Path:
    """Poll until the run's first checkpoint is on disk. Nothing is timed: the deadline only
    ends a child that hangs (on a loaded 2-core CI machine the first checkpoint can take
    minutes), and the child is killed so that no process outlives the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(runs_root.glob("*/last.pt"))
        if found:
            return found[0]
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"wdlab exited {proc.returncode} before a checkpoint: {err}")
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    raise AssertionError(f"no checkpoint appeared under {runs_root} in {timeout:.0f} s")


LONG_TINY = ["--tiny", "--set", "train.stop_at_target=false", "--set", "train.checkpoint_every=20",
             "--set", "train.monitor=off", "--steps", "1000", "--threads", "1"]
"""1000 steps: the first checkpoint is at step 20, so the child is still training when it is
killed (980 steps, seconds on a loaded machine, against a 50 ms poll). Ctrl-C on a real
`wdlab run` (exit 130, checkpoint, interrupted) is tests/test_cli.py's
test_ctrl_c_exits_130_with_the_exact_resume_command."""


def test_resume_after_sigkill_equals_uninterrupted(tmp_path) -> None:
    store_path = tmp_path / "s.db"
    proc = _wdlab("run", "teacher", *LONG_TINY, store=store_path)
    _wait_for_checkpoint(tmp_path / "wdlab-runs", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Store(store_path) as store:
        killed = store.list_runs()[0]
        # nobody could mark it, but its lease names a dead pid: it reads as interrupted
        assert killed.status == "interrupted"
        assert killed.resume_hint == f"wdlab run --resume {killed.id} --store {store_path}"
    threads = torch.get_num_threads()
    try:  # the resume in this process: what is tested is the killed child's checkpoint
        assert cli.main(["run", "--resume", killed.id, "--store", str(store_path),
                         "--quiet"]) == 0
        config = _config("train.stop_at_target=false", "train.checkpoint_every=20",
                         "train.threads=1", steps=1000)
        assert config.to_dict() == killed.config
        with Store(tmp_path / "ref.db") as store:
            reference = train.run(config, store, tmp_path / "ref-runs")
    finally:
        torch.set_num_threads(threads)
    expected = _final_params(tmp_path / "ref-runs", reference.run_id)
    got = _final_params(tmp_path / "wdlab-runs", killed.id)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


class _NaNAtStep7(Teacher):
    def batch(self, step):
        x, y = super().batch(step)
        return (torch.full_like(x, float("nan")), y) if step == 7 else (x, y)


@pytest.fixture
def nan_teacher(monkeypatch):
    real_get = workloads.get
    monkeypatch.setattr(workloads, "get", lambda n: _NaNAtStep7 if n == "teacher" else real_get(n))


def test_nonfinite_stop_marks_diverged_and_keeps_checkpoint(tmp_path, nan_teacher) -> None:
    config = _config("train.stop_at_target=false", "train.checkpoint_every=5", steps=20)
    with Store(tmp_path / "s.db") as store:
        result = train.run(config, store, tmp_path / "runs")
        record = store.get_run(result.run_id)
    assert result.status == "diverged" and record.status == "diverged"
    assert "step 7" in record.message and "\n" not in record.message
    assert "lr" in record.message
    payload = torch.load(tmp_path / "runs" / result.run_id / "last.pt", weights_only=True)
    assert payload["step"] == 5
    assert all(torch.isfinite(v).all() for v in payload["model"].values())


def test_nonfinite_skip_continues(tmp_path, nan_teacher) -> None:
    config = _config("train.stop_at_target=false", "train.on_nonfinite=skip", steps=20)
    with Store(tmp_path / "s.db") as store:
        result = train.run(config, store, tmp_path / "runs")
        skipped = store.metrics(result.run_id)["skipped_steps"]
    assert result.status == "finished" and result.step == 20
    assert skipped == [(8, 1.0)]
    payload = torch.load(tmp_path / "runs" / result.run_id / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in payload["model"].values())


def test_resume_refuses_changed_data(tmp_path) -> None:
    config = _config("train.stop_at_target=false", steps=5)
    with Store(tmp_path / "s.db") as store:
        result = train.run(config, store, tmp_path / "runs")
        store.update_run(result.run_id, status="interrupted")
        with sqlite3.connect(tmp_path / "s.db") as db:  # the data changed under the run
            db.execute("UPDATE runs SET data_hash = 'feedbeef' WHERE id = ?", (result.run_id,))
        run_id, cfg = train.resume_config(store, result.run_id)
        with pytest.raises(WdlabError, match="different data"):
            train.run(cfg, store, tmp_path / "runs", resume_id=run_id)


def test_resume_extends_the_budget_and_refuses_other_changes(tmp_path) -> None:
    """A finished run continued with --steps 80 equals a run trained to 80 at once (constant
    schedule: the lr does not depend on the budget); any other changed setting is refused."""
    settings = ("train.stop_at_target=false", "schedule.kind=constant",
                "train.checkpoint_every=20")
    short, long = _config(*settings, steps=40), _config(*settings, steps=80)
    with Store(tmp_path / "s.db") as store:
        first = train.run(short, store, tmp_path / "runs")
        with pytest.raises(WdlabError, match="already finished at step 40; give --steps N"):
            train.resume_config(store, first.run_id)
        with pytest.raises(WdlabError, match="N > 40"):
            train.resume_config(store, first.run_id, steps=40)
        with pytest.raises(ConfigError, match="optimizer.lr differ; only --steps may change"):
            train.resume_config(store, first.run_id, steps=80, flags={"optimizer.lr": 1e-2})
        with pytest.raises(ConfigError, match="model.width differ"):
            train.resume_config(store, first.run_id, steps=80, assignments=["model.width=8"])
        with pytest.raises(ConfigError, match="optimizer.lr differ"):  # the API refuses too
            changed = long.model_copy(update={"optimizer": long.optimizer.model_copy(
                update={"lr": 1e-2})})
            train.run(changed, store, tmp_path / "runs", resume_id=first.run_id)
        same_lr = {"optimizer.lr": short.optimizer.lr, "seed": short.seed}  # repeats: fine
        run_id, config = train.resume_config(store, first.run_id, steps=80, flags=same_lr)
        assert config.steps == 80
        resumed = train.run(config, store, tmp_path / "runs", resume_id=run_id)
        assert resumed.status == "finished" and resumed.step == 80
        assert store.get_run(run_id).config["steps"] == 80  # the next resume sees the budget
        got = store.metrics(run_id)
        reference = train.run(long, store, tmp_path / "runs")
        expected = store.metrics(reference.run_id)
    del got["train_seconds"], expected["train_seconds"]
    assert got == expected
    for key, value in _final_params(tmp_path / "runs", reference.run_id).items():
        assert torch.equal(value, _final_params(tmp_path / "runs", run_id)[key]), key


def test_resume_steps_keyword_and_below_reached_step(tmp_path, monkeypatch) -> None:
    config = _config("train.stop_at_target=false", "train.checkpoint_every=10", steps=30)
    real_batch = Teacher.batch
    monkeypatch.setattr(Teacher, "batch", lambda self, step: (_ for _ in ()).throw(
        RuntimeError("crash")) if step == 25 else real_batch(self, step))
    with Store(tmp_path / "s.db") as store:
        with pytest.raises(RuntimeError):
            train.run(config, store, tmp_path / "runs")
        run_id = store.list_runs()[0].id
        monkeypatch.setattr(Teacher, "batch", real_batch)
        with pytest.raises(ConfigError, match="--steps 15 is below step 20 that run"):
            train.run(config, store, tmp_path / "runs", resume_id=run_id, steps=15)
        result = train.run(config, store, tmp_path / "runs", resume_id=run_id, steps=50)
        assert result.status == "finished" and result.step == 50


def test_diverged_run_is_not_resumed(tmp_path, nan_teacher) -> None:
    config = _config("train.stop_at_target=false", "train.checkpoint_every=5", steps=20)
    with Store(tmp_path / "s.db") as store:
        result = train.run(config, store, tmp_path / "runs")
        with pytest.raises(WdlabError, match="diverged; resuming would replay"):
            train.resume_config(store, result.run_id)
