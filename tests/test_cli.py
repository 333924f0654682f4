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
