"""Live loggers (wdlab.monitor.sinks) and the "summary" monitor level, read back with the
real packages, offline: TensorBoard's EventAccumulator, MLflow's client on a sqlite store,
W&B's offline run file."""

from __future__ import annotations

import glob
import json
import shlex
import struct

import pytest
import torch
from doc_snippets import snippet

from wdlab.cli import main
from wdlab.store import Store


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")


def _run_id(store_path) -> str:
    with Store.open_existing(str(store_path)) as store:
        return store.list_runs()[0].id


def _rows(store_path, run_id, name) -> list[tuple[int, float]]:
    with Store.open_existing(str(store_path)) as store:
        return [(int(s), float(v)) for s, v in store.metrics(run_id, [name])[name]]


def _same(got, want) -> None:
    """Same steps, same values (float32 in TensorBoard, so to 1e-6 relative)."""
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


def _tensorboard(log_dir, tag) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _wandb_history(path) -> list[dict]:
    """The history records of a W&B offline run file (a LevelDB-style log of protobufs)."""
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                out.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                            for i in record.history.item})
    return out


def test_every_sink_holds_the_stores_rows(tmp_path, monkeypatch) -> None:
    """docs/integrations.md's command, with a 6-step budget and MLflow's file store (the
    sqlite default runs ~50 schema migrations on first use, too slow for the suite)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.chdir(tmp_path)
    (command,) = snippet("cli-log").strip().splitlines()
    argv = shlex.split(command)
    assert argv[:2] == ["wdlab", "run"] and "--log" in argv
    argv = [*argv[1:], "--quiet", "--steps", "6", "--set", "train.monitor_every=2",
            "--set", "train.eval_every=3",
            "--set", f"log.mlflow_uri='file:{tmp_path / 'mlruns'}'"]
    assert main(argv) == 0
    store = tmp_path / "wdlab.db"
    run_id = _run_id(store)
    loss = _rows(store, run_id, "train_loss")
    assert [s for s, _ in loss] == [1, 2, 3, 4, 5, 6]
    monitored = "mon/w_norm/role_max:matrix"
    mon = _rows(store, run_id, monitored)
    assert [s for s, _ in mon] == [2, 4, 6]
    with Store.open_existing(str(store)) as s:
        names = s.metric_names(run_id)
    assert not [n for n in names if n.startswith("mon/") and ("layer:" in n or ".weight" in n)]

    tb = tmp_path / "wdlab-runs" / run_id / "tensorboard"
    _same(_tensorboard(tb, "train_loss"), loss)
    _same(_tensorboard(tb, monitored), mon)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    (ml_run,) = client.search_runs([client.get_experiment_by_name("wdlab").experiment_id])
    assert ml_run.data.tags["wdlab.run_id"] == run_id
    assert ml_run.info.status == "FINISHED"
    assert ml_run.data.params["optimizer.name"] == "adamw"
    for name, rows in (("train_loss", loss), (monitored, mon)):
        history = sorted((m.step, m.value) for m in client.get_metric_history(
            ml_run.info.run_id, name))
        _same(history, rows)

    (path,) = glob.glob(str(tmp_path / "wdlab-runs" / run_id / "wandb" / "offline-run-*"
                            / f"run-{run_id}.wandb"))
    history = _wandb_history(path)
    _same([(h["_step"], h["train_loss"]) for h in history if "train_loss" in h], loss)
    _same([(h["_step"], h[monitored]) for h in history if monitored in h], mon)


def test_default_destinations_are_beside_the_store(tmp_path, monkeypatch) -> None:
    from wdlab.config import LogConfig
    from wdlab.monitor.sinks import Target, mlflow_uri

    target = Target("ab12cd34", None, "teacher", {}, tmp_path / "wdlab-runs", None)
    assert mlflow_uri(LogConfig(), target) == f"sqlite:///{tmp_path / 'wdlab-mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert mlflow_uri(LogConfig(), target) == "http://tracking:5000"
    assert mlflow_uri(LogConfig(mlflow_uri="sqlite:///x.db"), target) == "sqlite:///x.db"


def test_tensorboard_resume_continues_one_stream(tmp_path) -> None:
    """A resumed run appends to the run's event folder; the steps a killed process wrote
    past the checkpoint are purged, so every step appears once, with the store's value."""
    from torch.utils.tensorboard import SummaryWriter

    store = tmp_path / "w.db"
    common = ["--quiet", "--store", str(store), "--log", "tensorboard"]
    assert main(["run", "teacher", "--tiny", "--steps", "4", "--monitor", "off", *common]) == 0
    run_id = _run_id(store)
    tb = tmp_path / "wdlab-runs" / run_id / "tensorboard"
    stale = SummaryWriter(str(tb))  # what a process killed after the checkpoint left
    for step in (5, 6):
        stale.add_scalar("train_loss", 999.0, step)
    stale.close()
    assert main(["run", "--resume", run_id, "--steps", "8", *common]) == 0
    loss = _rows(store, run_id, "train_loss")
    assert [s for s, _ in loss] == list(range(1, 9))
    _same(_tensorboard(tb, "train_loss"), loss)


def test_a_missing_logger_package_is_one_line_naming_the_extra(capsys, tmp_path,
                                                               monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    store = tmp_path / "w.db"
    with pytest.raises(SystemExit) as info:
        main(["run", "teacher", "--tiny", "--quiet", "--store", str(store), "--log", "wandb"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'wdlab[wandb]'" in err
    assert not store.exists()
    with pytest.raises(SystemExit):
        main(["run", "teacher", "--tiny", "--store", str(store), "--log", "tensorbord"])
    assert "unknown logger 'tensorbord'" in capsys.readouterr().err


def test_summary_level_aggregates_the_light_probes() -> None:
    """37 names for a 12-layer GPT where "light" gives 573; each role mean equals light's,
    each max is the max over that role's per-tensor values."""
    from wdlab import create_optimizer
    from wdlab.monitor import Monitor
    from wdlab.nn.transformer import GPT, GPTConfig

    results = {}
    for level in ("light", "summary"):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=16, context=4, n_layer=12, n_head=2, d_model=8))
        x = torch.randint(0, 16, (2, 4))
        # probe=False: the same roles (no tensor of a pre-norm GPT is scale-invariant)
        opt = create_optimizer(model, "adamw", lr=1e-2, weight_decay=0.1, probe=False)
        monitor = Monitor(model, opt, every=1, level=level)
        monitor.before_forward(1)
        model(x).float().logsumexp(-1).mean().backward()
        opt.step()
        results[level] = monitor.step(1)
        roles = {n: g["role"] for g in opt.param_groups for n in g["param_names"]}
    light, summary = results["light"], results["summary"]
    assert (len(light), len(summary)) == (573, 37)
    checked = 0
    for key, value in summary.items():
        if "/role_max:" in key:
            probe, role = key[len("mon/"):].split("/role_max:")
            values = [v for k, v in light.items() if k.startswith(f"mon/{probe}/")
                      and roles.get(k[len(f"mon/{probe}/"):]) == role]
            assert value == pytest.approx(max(values)), key
            mean = key.replace("/role_max:", "/role:")
            assert summary[mean] == pytest.approx(light[mean])
            checked += 1
    assert checked == 15
    layers = [v for k, v in light.items() if k.startswith("mon/attn_entropy/layer:")]
    assert summary["mon/attn_entropy/layers:mean"] == pytest.approx(sum(layers) / len(layers))
    assert summary["mon/logit_max"] == light["mon/logit_max"]


def test_mlflow_resume_continues_the_run_without_duplicate_steps(tmp_path, monkeypatch) -> None:
    """A resumed run finds its MLflow run by tag and skips the steps MLflow already holds
    (sent by a process killed after its last checkpoint)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    from wdlab.monitor.sinks import Target
    from wdlab.monitor.sinks.mlflow import MLflowLogger

    uri = f"file:{tmp_path / 'mlruns'}"
    first = MLflowLogger(uri, "wdlab", Target("ab12cd34", "r", "teacher", {"seed": 0},
                                              tmp_path, None))
    for step in (1, 2, 3):
        first.log(step, {"train_loss": float(step)})
    first.flush()  # then the process dies: the checkpoint was at step 1
    resumed = MLflowLogger(uri, "wdlab", Target("ab12cd34", "r", "teacher", {"seed": 0},
                                                tmp_path, 1))
    assert resumed.run_id == first.run_id
    for step in (2, 3, 4):
        resumed.log(step, {"train_loss": float(step)})
    resumed.close("finished")
    client = MlflowClient(tracking_uri=uri)
    history = sorted((m.step, m.value) for m in client.get_metric_history(resumed.run_id,
                                                                          "train_loss"))
    assert history == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    assert client.get_run(resumed.run_id).info.status == "FINISHED"


def test_monitor_snippet_writes_tensorboard(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(snippet("monitor-tensorboard"), "monitor-tensorboard", "exec"), ns)
    got = _tensorboard(tmp_path / "tb" / "plain-loop", "mon/angle/role:matrix")
    assert [s for s, _ in got] == [5, 10, 15, 20]
    assert got[-1][1] == pytest.approx(ns["monitor"].latest["mon/angle/role:matrix"], rel=1e-6)


def test_resume_may_change_the_log_section_only() -> None:
    from wdlab import train
    from wdlab.config import build_config, validate
    from wdlab.errors import ConfigError

    stored = build_config("teacher", tiny=True).to_dict()
    logged = validate({**stored, "log": {"sinks": "tensorboard, wandb"}})
    assert logged.log.sinks == ["tensorboard", "wandb"]
    train._check_resume_config("ab12cd34", stored, logged)  # allowed: where rows are mirrored
    with pytest.raises(ConfigError, match="seed"):
        train._check_resume_config("ab12cd34", stored, validate({**stored, "seed": 7}))
    with pytest.raises(ConfigError, match="log.sinks"):
        validate({**stored, "log": {"sinks": ["tensorbord"]}})
