"""Malformed input of every kind the CLI takes (flags, TOML files, stores, checkpoints, names).

Each one must end in exit code 2 and exactly one line on stderr, with no traceback, and the
failed command must leave the directory exactly as it found it: no file created, removed or
changed (compared by content and mtime, before and after). The commands run in-process
(`main(argv)`) to stay fast; a few go through a real subprocess to check the console-level
behaviour (`python -m wdlab`) too.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from wdlab.cli import main

# ---------------------------------------------------------------- the world the inputs hit


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file and folder under root: (size, mtime_ns, sha256) — folders with size -1."""
    out: dict[str, tuple[int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = Path(dirpath, name)
            out[str(path.relative_to(root)) + "/"] = (-1, path.stat().st_mtime_ns, "")
        for name in filenames:
            path = Path(dirpath, name)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path.relative_to(root))] = (path.stat().st_size, path.stat().st_mtime_ns,
                                                digest)
    return out


class _Evil:
    """A pickle that would run a shell command if loaded unsafely."""

    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def _store_with(path: Path, *, runs: int = 0) -> list[str]:
    from wdlab.config import build_config
    from wdlab.store import Store

    config = build_config("teacher", tiny=True).to_dict()
    ids = []
    with Store(path) as store:
        for i in range(runs):
            run_id = store.create_run(workload="teacher", config=config, seed=0, name=f"r{i}")
            store.log_metrics(run_id, 1, {"train_loss": 1.0})
            store.update_run(run_id, status="interrupted")
            ids.append(run_id)
    return ids


def _raw(path: Path, sql: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """A folder with a good store (runs whose checkpoints are broken in various ways), bad
    stores, bad TOML files and a model module whose probe input does not fit."""
    import torch

    root = tmp_path_factory.mktemp("fuzz")
    names: dict[str, str] = {"root": str(root)}
    store = root / "wdlab.db"
    ids = _store_with(store, runs=8)
    kinds = ["empty", "truncated", "garbage", "evil", "none", "format", "finished", "valid"]
    names.update(dict(zip(kinds, ids, strict=True)))
    runs = root / "wdlab-runs"
    for kind, run_id in zip(kinds, ids, strict=True):
        if kind != "none":
            (runs / run_id).mkdir(parents=True)
    # "valid" is a real run whose checkpoint is still unusable: a refusal that wrongly let a
    # command through ends in an error too, never in training inside the fuzz folder
    good = {"format": 99, "step": 1, "model": {}}
    buffer = root / "good.pt"
    torch.save({"format": 1, "tensor": torch.ones(3)}, buffer)
    (runs / ids[0] / "last.pt").write_bytes(b"")
    (runs / ids[1] / "last.pt").write_bytes(buffer.read_bytes()[: buffer.stat().st_size // 2])
    # fixed bytes (random ones may happen to ask torch's legacy loader for a huge storage)
    (runs / ids[2] / "last.pt").write_bytes(b"not a checkpoint\n" * 256)
    (runs / ids[3] / "last.pt").write_bytes(pickle.dumps(_Evil()))
    torch.save(good, runs / ids[5] / "last.pt")
    torch.save(good, runs / ids[7] / "last.pt")
    buffer.unlink()
    _raw(store, "UPDATE runs SET status = 'finished', result = ? WHERE id = ?",
         ('{"step": 20, "reached": false}', names["finished"]))

    (root / "empty.db").write_bytes(b"")
    (root / "text.db").write_text("this is not sqlite\n" * 100)
    foreign = root / "foreign.db"
    _raw(foreign, "CREATE TABLE t (x)")
    for name, sql in [
        ("newer.db", "UPDATE meta SET value = '999' WHERE key = 'schema_version'"),
        ("badversion.db", "UPDATE meta SET value = 'abc' WHERE key = 'schema_version'"),
        ("badjson.db", "UPDATE runs SET config = '{not json'"),
        ("noruns.db", "DROP TABLE runs"),
    ]:
        _store_with(root / name, runs=1)
        _raw(root / name, sql)
    corrupt = root / "corrupt.db"
    _store_with(corrupt, runs=3)
    data = bytearray(corrupt.read_bytes())
    data[4096:] = b"\xff" * (len(data) - 4096)
    corrupt.write_bytes(bytes(data))
    truncated = root / "truncated.db"
    _store_with(truncated, runs=3)
    truncated.write_bytes(truncated.read_bytes()[:1500])
    (root / "header.db").write_bytes(b"SQLite format 3\x00" + b"\x07\xff\x00" * 700)

    (root / "syntax.toml").write_text("steps = = 3\n")
    (root / "o3.toml").write_text("optimizer = 3\n")
    (root / "other.toml").write_text('workload = "charlm"\n')
    (root / "binary.toml").write_bytes(b"\xff\xfe\x00steps = 3")
    (root / "unknown.toml").write_text("[train]\nspeed = 3\n")
    (root / "seed.toml").write_text("seed = 99999999999999999999\n")
    (root / "lr.toml").write_text("[optimizer]\nlr = -1.0\n")
    (root / "type.toml").write_text('steps = "many"\n')
    (root / "tomldir.toml").mkdir()
    (root / "fuzz_models.py").write_text(
        "import torch.nn as nn\n\n"
        "def misfit():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(5, 2))\n\n"
        "def crashes():\n"
        "    return 'not a model'\n"
    )
    return names


# ---------------------------------------------------------------- the malformed inputs

T = "teacher"
CASES: list[tuple[str, list[str], str]] = [
    # (id, argv with {placeholders}, a fragment the one error line must hold)
    ("lr-text", ["run", T, "--lr", "abc"], "--lr"),
    ("lr-negative", ["run", T, "--lr", "-1e-3"], "optimizer.lr"),
    ("lr-negative-plain", ["run", T, "--lr", "-0.5"], "optimizer.lr"),
    ("lr-nan", ["run", T, "--lr", "nan"], "--lr"),
    ("lr-inf", ["run", T, "--lr", "-inf"], "--lr"),
    ("wd-negative", ["run", T, "--wd", "-0.1"], "weight_decay"),
    ("steps-zero", ["run", T, "--steps", "0"], "--steps"),
    ("steps-negative", ["run", T, "--steps", "-5"], "--steps"),
    ("steps-float", ["run", T, "--steps", "1.5"], "--steps"),
    ("seed-negative", ["run", T, "--seed", "-1"], "--seed"),
    ("seed-huge", ["run", T, "--seed", "99999999999999999999999"], "--seed"),
    ("seed-float", ["run", T, "--seed", "1e3"], "--seed"),
    ("target-nan", ["run", T, "--target", "nan"], "--target"),
    ("optimizer-unknown", ["run", T, "--optimizer", "adamq"], "adamq"),
    ("decay-unknown", ["run", T, "--decay", "sometimes"], "--decay"),
    ("monitor-unknown", ["run", T, "--monitor", "loud"], "--monitor"),
    ("threads-zero", ["run", T, "--threads", "0"], "--threads"),
    ("workload-unknown", ["run", "nope"], "nope"),
    ("workload-missing", ["run"], "name a workload"),
    ("flag-unknown", ["run", T, "--frobnicate"], "--frobnicate"),
    ("set-typo", ["run", T, "--set", "model.widht=3"], "model.widht"),
    ("set-betas", ["run", T, "--set", "optimizer.betas=[1.5, 0.9]"], "betas"),
    ("set-no-equals", ["run", T, "--set", "noequals"], "key=value"),
    ("set-no-key", ["run", T, "--set", "=3"], "key=value"),
    ("set-seed-huge", ["run", T, "--set", "seed=99999999999999999999"], "seed"),
    ("set-steps-zero", ["run", T, "--set", "steps=0"], "steps"),
    ("set-lr-negative", ["run", T, "--set", "optimizer.lr=-1"], "optimizer.lr"),
    ("set-eval-zero", ["run", T, "--set", "train.eval_every=0"], "eval_every"),
    ("set-schedule", ["run", T, "--set", "schedule.kind=zigzag"], "schedule.kind"),
    ("set-section-value", ["run", T, "--set", "steps.x=1"], "steps"),
    ("model-too-big", ["run", T, "--tiny", "--set", "model.width=100000000000"], "model.width"),
    ("store-missing-dir", ["run", T, "--store", "nowhere/deeper/x.db"], "nowhere/deeper"),
    ("store-is-dir", ["run", T, "--store", "wdlab-runs"], "directory"),
    ("store-text", ["run", T, "--tiny", "--store", "text.db"], "text.db"),
    ("resume-with-lr", ["run", "--resume", "{valid}", "--lr", "1"], "optimizer.lr"),
    ("resume-other-workload", ["run", "charlm", "--resume", "{valid}"], "workload"),
    ("resume-with-set", ["run", "--resume", "{valid}", "--set", "seed=1"], "seed"),
    ("resume-with-config", ["run", "--resume", "{valid}", "--config", "lr.toml"], "--config"),
    ("resume-unknown", ["run", "--resume", "nosuchrun"], "nosuchrun"),
    ("resume-finished", ["run", "--resume", "{finished}"], "finished"),
    ("resume-finished-fewer", ["run", "--resume", "{finished}", "--steps", "5"], "N > 20"),
    ("resume-missing-store", ["run", "--resume", "{valid}", "--store", "none.db"], "none.db"),
    ("ckpt-empty", ["run", "--resume", "{empty}"], "checkpoint"),
    ("ckpt-truncated", ["run", "--resume", "{truncated}"], "checkpoint"),
    ("ckpt-garbage", ["run", "--resume", "{garbage}"], "checkpoint"),
    ("ckpt-malicious", ["run", "--resume", "{evil}"], "checkpoint"),
    ("ckpt-format", ["run", "--resume", "{format}"], "checkpoint"),
    ("toml-missing", ["run", T, "--config", "missing.toml"], "missing.toml"),
    ("toml-syntax", ["run", T, "--config", "syntax.toml"], "syntax.toml"),
    ("toml-optimizer-int", ["run", T, "--config", "o3.toml"], "optimizer"),
    ("toml-other-workload", ["run", T, "--config", "other.toml"], "charlm"),
    ("toml-binary", ["run", T, "--config", "binary.toml"], "binary.toml"),
    ("toml-unknown-key", ["run", T, "--config", "unknown.toml"], "train.speed"),
    ("toml-seed-huge", ["run", T, "--config", "seed.toml"], "seed"),
    ("toml-lr-negative", ["run", T, "--config", "lr.toml"], "optimizer.lr"),
    ("toml-type", ["run", T, "--config", "type.toml"], "steps"),
    ("toml-directory", ["run", T, "--config", "tomldir.toml"], "tomldir.toml"),
    ("command-unknown", ["frobnicate"], "frobnicate"),
    ("command-missing", [], "COMMAND"),
    ("runs-limit-zero", ["runs", "--limit", "0"], "--limit"),
    ("runs-status", ["runs", "--status", "sleeping"], "sleeping"),
    ("runs-no-store", ["runs", "--store", "none.db"], "none.db"),
    ("runs-missing-dir", ["runs", "--store", "/nonexistent/dir/x.db"], "/nonexistent/dir"),
    ("runs-empty-store", ["runs", "--store", "empty.db"], "empty.db"),
    ("runs-text-store", ["runs", "--store", "text.db"], "text.db"),
    ("runs-foreign-store", ["runs", "--store", "foreign.db"], "foreign.db"),
    ("runs-newer-store", ["runs", "--store", "newer.db"], "newer.db"),
    ("runs-bad-version", ["runs", "--store", "badversion.db"], "badversion.db"),
    ("runs-bad-json", ["runs", "--store", "badjson.db"], "badjson.db"),
    ("runs-dropped-table", ["runs", "--store", "noruns.db"], "noruns.db"),
    ("runs-corrupt", ["runs", "--store", "corrupt.db"], "corrupt.db"),
    ("runs-truncated", ["runs", "--store", "truncated.db"], "truncated.db"),
    ("runs-bad-header", ["runs", "--store", "header.db"], "header.db"),
    ("show-unknown", ["show", "deadbeef"], "deadbeef"),
    ("show-empty-ref", ["show", ""], "run"),
    ("show-markup-name", ["show", "[/]"], "[/]"),
    ("show-link-name", ["show", "[link=https://example.invalid]x"], "[link="),
    ("show-newline-name", ["show", "a\nb\x1b[2J"], "a\\nb\\x1b[2J"),
    ("show-no-store", ["show", "x", "--store", "none.db"], "none.db"),
    ("export-dot", ["export", "{valid}", "-o", "."], "directory"),
    ("export-missing-dir", ["export", "{valid}", "-o", "nodir/x.csv"], "nodir"),
    ("export-format", ["export", "{valid}", "--format", "parquet"], "parquet"),
    ("export-unknown", ["export", "nosuch"], "nosuch"),
    ("export-tb-onto-file", ["export", "{valid}", "--format", "tensorboard", "-o", "o3.toml"],
     "o3.toml"),
    ("report-unknown", ["report", "nosuch"], "nosuch"),
    ("report-dot", ["report", "{valid}", "-o", "."], "directory"),
    ("sweeps-no-store", ["sweeps", "--store", "none.db"], "none.db"),
    ("sweep-unknown-workload", ["sweep", "nope", "--store", "new.db"], "nope"),
    ("sweep-bad-seeds", ["sweep", T, "--seeds", "abc", "--store", "new.db"], "--seeds"),
    ("sweep-missing-dir", ["sweep", T, "--store", "nowhere/x.db"], "nowhere"),
    ("inspect-function", ["inspect", "os:getcwd"], "torch.nn.Module"),
    ("inspect-no-params", ["inspect", "torch.nn:Identity"], "parameters"),
    ("inspect-needs-args", ["inspect", "torch.nn:Linear"], "without arguments"),
    ("inspect-no-module", ["inspect", "no_such_module:make"], "no_such_module"),
    ("inspect-empty-spec", ["inspect", ":"], "MODEL"),
    ("inspect-no-attr", ["inspect", "os:nothing_here"], "nothing_here"),
    ("inspect-probe-misfit", ["inspect", "fuzz_models:misfit"], "example_input"),
    ("inspect-returns-str", ["inspect", "fuzz_models:crashes"], "str"),
    ("inspect-unknown-workload", ["inspect", "nope"], "nope"),
    ("transfer-rule", ["transfer", "--rule", "zz", "--from-width", "1", "--to-width", "2",
                       "--lr", "1", "--wd", "0"], "zz"),
    ("transfer-width", ["transfer", "--rule", "mup", "--from-width", "0", "--to-width", "2",
                        "--lr", "1", "--wd", "0"], "--from-width"),
    ("coordcheck-widths", ["coordcheck", T, "--widths", "16,x"], "--widths"),
    ("coordcheck-workload", ["coordcheck", "nope", "--widths", "16,32"], "nope"),
]


def _argv(template: list[str], world: dict[str, str]) -> list[str]:
    return [part.format(**world) if "{" in part and "}" in part and "[" not in part else part
            for part in template]


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_input_is_one_line_exit_2_and_changes_nothing(
    world, argv, expected, capsys, monkeypatch
) -> None:
    root = Path(world["root"])
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    before = _snapshot(root)
    with pytest.raises(SystemExit) as info:
        main(_argv(argv, world))
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert info.value.code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and lines[0].startswith("wdlab")
    assert _argv([expected], world)[0] in lines[0]
    assert _snapshot(root) == before, "the failed command changed files on disk"
    assert not (root / "pwned.txt").exists()


def test_there_are_at_least_60_inputs() -> None:
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["runs", "--store", "corrupt.db"], "corrupt.db"),
        (["run", "--resume", "{evil}"], "checkpoint"),
    ],
    ids=["corrupt-store", "malicious-checkpoint"],
)
def test_malformed_input_through_the_console(world, argv, expected) -> None:
    """The same contract for a real process: exit code 2 and one stderr line."""
    root = Path(world["root"])
    before = _snapshot(root)
    done = subprocess.run([sys.executable, "-m", "wdlab", *_argv(argv, world)], cwd=root,
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert expected in done.stderr
    assert _snapshot(root) == before
    assert not (root / "pwned.txt").exists()
