"""The command line: one-line errors with exit code 2, and the happy paths end to end."""

from __future__ import annotations

import pytest

from wdlab.cli import main


def _fails(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "nope"], "unknown workload 'nope'"),
        (["run", "teacher", "--lr", "abc"], "--lr"),
        (["run", "teacher", "--steps", "0"], "--steps"),
        (["run", "teacher", "--set", "optimizer.lr=-1"], "optimizer.lr"),
        (["run", "teacher", "--set", "model.widht=3"], "model.widht"),
        (["run", "teacher", "--optimizer", "adamq"], "unknown optimizer 'adamq'"),
        (["run", "teacher", "--set", "optimizer.betas=[1.5, 0.9]"], "betas"),
        (["run"], "name a workload"),
        (["frobnicate"], "invalid choice"),
        (["inspect", "no_such_module:make"], "no_such_module"),
    ],
)
def test_bad_input_is_one_line_with_exit_2(capsys, tmp_path, argv, expected) -> None:
    store = ["--store", str(tmp_path / "s.db")] if argv[:1] == ["run"] else []
    err = _fails(capsys, *argv, *store)
    assert expected in err


def test_unknown_run_and_not_a_store(capsys, tmp_path) -> None:
    from wdlab.store import Store

    Store(tmp_path / "s.db").close()
    err = _fails(capsys, "show", "deadbeef", "--store", str(tmp_path / "s.db"))
    assert "deadbeef" in err
    err = _fails(capsys, "show", "deadbeef", "--store", str(tmp_path / "none.db"))
    assert "no store at" in err and "none.db" in err
    assert not (tmp_path / "none.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_text("this is not sqlite" * 100)
    err = _fails(capsys, "runs", "--store", str(junk))
    assert "junk.db" in err


def test_run_show_runs_export_inspect(capsys, tmp_path) -> None:
    store = str(tmp_path / "s.db")
    assert main(["run", "teacher", "--tiny", "--quiet", "--name", "first", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "reached" in out and "to target" in out
    assert main(["runs", "--store", store]) == 0
    assert "first" in capsys.readouterr().out
    assert main(["show", "first", "--store", store, "-o", str(tmp_path / "plots")]) == 0
    assert list((tmp_path / "plots").glob("*.png"))
    capsys.readouterr()
    csv_path = tmp_path / "m.csv"
    assert main(["export", "first", "--format", "csv", "-o", str(csv_path), "--store", store]) == 0
    assert csv_path.read_text().splitlines()[0] == "step,name,value"
    assert main(["inspect", "teacher"]) == 0
    out = capsys.readouterr().out
    assert "matrix" in out and "bias" in out


def test_transfer_and_coordcheck_commands(capsys, tmp_path) -> None:
    assert main(["transfer", "--rule", "fan", "--from-width", "64", "--to-width", "256",
                 "--lr", "3e-3", "--wd", "0.1"]) == 0
    out = capsys.readouterr().out
    # fan: matrix lr scales 1/width (64/256), matrix wd scales sqrt(width) (2x)
    matrix = next(line for line in out.splitlines() if "matrix" in line)
    assert "0.00075" in matrix and "0.2" in matrix
    assert main(["coordcheck", "teacher", "--tiny", "--widths", "16,32", "--steps", "2",
                 "-o", str(tmp_path / "cc")]) == 0
    assert (tmp_path / "cc" / "coordcheck_mup.png").is_file()
    err = _fails(capsys, "coordcheck", "teacher", "--widths", "16,x")
    assert "--widths" in err


# ---- stored strings are text, never markup or terminal control (issue 15, item 4) ----------

HOSTILE = ["[/]", "[link=https://example.invalid]click[/link]", "[bold red]loud", "esc\x1b[2Jclear"]


def _hostile_store(path) -> list[str]:
    from wdlab.store import Store

    ids = []
    with Store(path) as store:
        for name in HOSTILE:
            run_id = store.create_run(workload="teacher", seed=0, name=name,
                                      config={"optimizer": {"name": name, "lr": 1e-3}})
            store.log_metrics(run_id, 1, {"train_loss": 0.5})
            store.update_run(run_id, status="interrupted", message=f"note {name}")
            ids.append(run_id)
    return ids


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_hostile_names_print_literally(capsys, tmp_path, monkeypatch, terminal) -> None:
    if terminal:  # rich then emits styles and OSC 8 hyperlinks, if it reads markup
        monkeypatch.setenv("FORCE_COLOR", "1")
        monkeypatch.setenv("COLUMNS", "400")
    store = str(tmp_path / "s.db")
    ids = _hostile_store(tmp_path / "s.db")
    assert main(["runs", "--store", store]) == 0
    out = capsys.readouterr().out
    for name in HOSTILE[:3]:
        assert name in _plain(out), name
    assert "esc\\x1b[2Jclear" in _plain(out)
    assert "\x1b]8;" not in out and "\x1b[2J" not in out  # no hyperlink, no screen clear
    assert f"continue one with: wdlab run --resume {ids[-1]} --store {store}" in _plain(out)
    for run_id, name in zip(ids, HOSTILE, strict=True):
        assert main(["show", run_id, "--no-plots", "--store", store]) == 0
        out = capsys.readouterr().out
        shown = name.replace("\x1b", "\\x1b")
        assert f"({shown})" in _plain(out) and f"note {shown}" in _plain(out)
        assert f"name={shown}" in _plain(out)
        assert "\x1b]8;" not in out and "\x1b[2J" not in out
        assert f"wdlab run --resume {run_id} --store {store}" in _plain(out)
    err = _fails(capsys, "show", "[/]x\n[link=y]", "--store", store)
    assert "'[/]x\\n[link=y]'" in err


def _plain(text: str) -> str:
    """Output with rich's SGR colour codes removed (what a terminal shows)."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_progress_labels_are_not_markup(monkeypatch) -> None:
    import io

    import rich
    from rich.console import Console

    from wdlab.progress import PlainProgress, RichProgress

    buffer = io.StringIO()
    monkeypatch.setattr(rich, "_console", Console(file=buffer, force_terminal=True, width=200))
    bar = RichProgress("sweep [link=https://example.invalid]x[/] \x1b[2J")
    bar.start(10, 0)
    bar.update(5, {"loss": 0.25})
    bar.stop()
    shown = _plain(buffer.getvalue())
    assert "sweep [link=https://example.invalid]x[/] \\x1b[2J" in shown
    assert "\x1b]8;" not in buffer.getvalue()
    plain = io.StringIO()
    lines = PlainProgress("[/]\x1b[2J", stream=plain)
    lines.start(1, 0)
    lines.update(1, {"loss": 1.0})
    assert plain.getvalue().startswith("[/]\\x1b[2J step 1/1 loss 1")


# ---- Ctrl-C, resume, negative numbers, stores (issue 15, item 9) ---------------------------


def test_ctrl_c_exits_130_with_the_exact_resume_command(tmp_path) -> None:
    """SIGINT to a real `python -m wdlab run` once its first checkpoint is on disk: exit code
    130, the run checkpointed at the step it stopped (the checkpoint's step is the stored
    result's) and marked interrupted, the last stderr line the exact command that resumes
    it. 1000 steps: the first checkpoint is at step 20, so the child is still training when
    the signal comes (980 steps, seconds on a loaded machine, against a 20 ms poll)."""
    import signal
    import subprocess
    import sys
    import time

    import torch

    store = tmp_path / "s.db"
    argv = ["run", "teacher", "--tiny", "--set", "train.stop_at_target=false", "--set",
            "train.checkpoint_every=20", "--set", "train.monitor=off", "--steps", "1000",
            "--threads", "1", "--quiet", "--store", str(store)]
    proc = subprocess.Popen([sys.executable, "-m", "wdlab", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while not list((tmp_path / "wdlab-runs").glob("*/last.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err  # interrupted is 130 everywhere (issue 15)
    from wdlab.store import Store

    with Store(store) as s:
        record = s.list_runs()[0]
    assert record.status == "interrupted"
    assert "--resume" in record.message
    step = torch.load(tmp_path / "wdlab-runs" / record.id / "last.pt", weights_only=True)["step"]
    assert 0 < step < 1000
    assert record.result["step"] == step
    command = f"wdlab run --resume {record.id} --store {store}"
    assert err.strip().splitlines()[-1].endswith(f"continue with: {command}"), err
    # ... and that command, given a larger budget, continues the run to its end
    threads = torch.get_num_threads()
    try:
        assert main([*command.split()[1:], "--steps", "1001", "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    with Store(store) as s:
        record = s.get_run(record.id)
    assert record.status == "finished" and record.result["step"] == 1001


def test_negative_numbers_are_values_not_flags(capsys, tmp_path) -> None:
    from wdlab.cli._args import join_negative_numbers

    assert join_negative_numbers(["run", "x", "--lr", "-1e-3", "--wd", "-.5", "-o", "-1"]) == [
        "run", "x", "--lr=-1e-3", "--wd=-.5", "-o", "-1"]
    assert join_negative_numbers(["--", "--lr", "-1"]) == ["--", "--lr", "-1"]
    err = _fails(capsys, "run", "teacher", "--lr", "-1e-3", "--store", str(tmp_path / "s.db"))
    assert "optimizer.lr" in err and "-0.001" in err
    err = _fails(capsys, "run", "teacher", "--target", "-inf", "--store", str(tmp_path / "s.db"))
    assert "--target" in err and "finite" in err
    assert not (tmp_path / "s.db").exists()


def test_store_paths_are_never_invented(capsys, tmp_path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    err = _fails(capsys, "run", "teacher", "--tiny", "--store", str(missing))
    assert f"directory {missing.parent} does not exist" in err
    for command in (["runs"], ["sweeps"], ["show", "x"], ["export", "x"], ["report", "x"]):
        err = _fails(capsys, *command, "--store", str(missing))
        assert "no store at" in err, command
        err = _fails(capsys, *command, "--store", str(tmp_path / "absent.db"))
        assert "no store at" in err, command
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_fails_before_training_leaves_no_store(capsys, tmp_path) -> None:
    err = _fails(capsys, "run", "teacher", "--tiny", "--set", "model.width=100000000000",
                 "--store", str(tmp_path / "s.db"))
    assert "out of memory" in err and "model.width=100000000000" in err
    assert list(tmp_path.iterdir()) == []


def test_python_dash_m_wdlab(tmp_path) -> None:
    import subprocess
    import sys

    for module in ("wdlab", "wdlab.cli"):
        done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0 and done.stdout.startswith("wdlab "), done.stderr
