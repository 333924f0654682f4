"""The run store: round trips, lookup errors, concurrency across processes, exporters."""

from __future__ import annotations

import copy
import csv
import json
import math
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import wdlab.store._db as store_mod
from wdlab.errors import WdlabError
from wdlab.store import DEFAULT_PATH, SCHEMA_VERSION, Store, store_path_default


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "wdlab.db"


def _raw_rows(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read with a separate plain sqlite3 connection: what other processes would see."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _run_script(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_all(procs: list[subprocess.Popen]) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out)
    return outs


# ------------------------------------------------------------------------------ runs


def test_run_round_trip(db: Path) -> None:
    config = {"optimizer": {"name": "adamw", "lr": 1e-3, "wd": 0.1}, "steps": 50}
    with Store(db) as s:
        rid = s.create_run(workload="mlp", config=config, seed=7, data_hash="abc123")
        rec = s.get_run(rid)
        assert (rec.id, rec.workload, rec.status, rec.seed) == (rid, "mlp", "created", 7)
        assert rec.config == config
        assert rec.data_hash == "abc123" and rec.sweep_id is None
        assert rec.result is None and rec.message is None
        assert set(rec.versions) == {"python", "torch", "wdlab", "platform"}
        assert len(rid) == 8 and int(rid, 16) >= 0

        s.update_run(rid, status="running")
        s.update_run(rid, status="finished", result={"val_loss": 0.25, "steps": 50}, message="ok")
        rec2 = s.get_run(rid)
    assert rec2.status == "finished"
    assert rec2.result == {"val_loss": 0.25, "steps": 50}
    assert rec2.message == "ok"
    assert rec2.created == rec.created and rec2.updated >= rec.updated
    with pytest.raises(AttributeError):
        rec2.status = "failed"  # type: ignore[misc]  # frozen


def test_update_run_validation(db: Path) -> None:
    with Store(db) as s:
        rid = s.create_run(workload="mlp", config={}, seed=0)
        with pytest.raises(WdlabError, match="status='done'.*created, running, finished"):
            s.update_run(rid, status="done")
        with pytest.raises(WdlabError, match="no run 'zzzzzzzz'"):
            s.update_run("zzzzzzzz", status="failed")
        with pytest.raises(WdlabError, match="config must be JSON-serializable"):
            s.create_run(workload="mlp", config={"x": object()}, seed=0)
        with pytest.raises(WdlabError, match="seed must be an integer"):
            s.create_run(workload="mlp", config={}, seed=1.5)  # type: ignore[arg-type]
        assert s.get_run(rid).status == "created"


def test_default_names_and_lookup(db: Path) -> None:
    with Store(db) as s:
        a = s.create_run(workload="mlp", config={}, seed=0)
        b = s.create_run(workload="mlp", config={}, seed=1)
        c = s.create_run(workload="charlm", config={}, seed=0, name="baseline")
        d = s.create_run(workload="charlm", config={}, seed=0)
        assert [s.get_run(x).name for x in (a, b, c, d)] == [
            "mlp-1",
            "mlp-2",
            "baseline",
            "charlm-1",
        ]
        assert s.get_run("mlp-2").id == b
        assert s.get_run("baseline").id == c
        assert s.get_run(a).id == a
        # shortest unique prefix of a
        others = [b, c, d]
        k = next(k for k in range(1, 9) if all(not o.startswith(a[:k]) for o in others))
        assert s.get_run(a[:k]).id == a


def test_prefix_ambiguous_and_unknown(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = iter(["abc12345", "abc67890", "ffff0000"])
    monkeypatch.setattr(store_mod, "_new_id", lambda: next(ids))
    with Store(db) as s:
        for seed in range(3):
            s.create_run(workload="mlp", config={}, seed=seed)
        with pytest.raises(WdlabError) as err:
            s.get_run("abc")
        msg = str(err.value)
        assert "'abc' is ambiguous" in msg and "abc12345" in msg and "abc67890" in msg
        assert "wdlab runs" in msg and "\n" not in msg
        assert s.get_run("abc6").id == "abc67890"
        with pytest.raises(WdlabError) as err:
            s.get_run("0123")
        assert "no run '0123'" in str(err.value) and "wdlab runs" in str(err.value)
        # LIKE wildcards in a reference are literal, not patterns
        with pytest.raises(WdlabError, match="no run '%'"):
            s.get_run("%")
        with pytest.raises(WdlabError, match="no run 'a_c'"):
            s.get_run("a_c")


def test_id_collision_is_redrawn(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = iter(["aaaa0000", "aaaa0000", "bbbb1111"])
    monkeypatch.setattr(store_mod, "_new_id", lambda: next(ids))
    with Store(db) as s:
        first = s.create_run(workload="mlp", config={}, seed=0)
        second = s.create_run(workload="mlp", config={}, seed=0)
    assert (first, second) == ("aaaa0000", "bbbb1111")


def test_list_runs_filters_and_order(db: Path) -> None:
    with Store(db) as s:
        sweep = s.create_sweep(spec={"lr": [1, 2]})
        made = []
        for i in range(5):
            made.append(
                s.create_run(
                    workload="mlp" if i % 2 == 0 else "cnn",
                    config={"i": i},
                    seed=i,
                    sweep_id=sweep if i >= 3 else None,
                )
            )
        s.update_run(made[0], status="finished")
        s.update_run(made[4], status="finished")
        assert [r.id for r in s.list_runs()] == made[::-1]
        assert [r.id for r in s.list_runs(workload="mlp")] == [made[4], made[2], made[0]]
        assert [r.id for r in s.list_runs(status="finished")] == [made[4], made[0]]
        assert [r.id for r in s.list_runs(sweep_id=sweep)] == [made[4], made[3]]
        assert [r.id for r in s.list_runs(workload="mlp", status="created")] == [made[2]]
        assert [r.id for r in s.list_runs(limit=2)] == [made[4], made[3]]
        with pytest.raises(WdlabError, match="status='ok'"):
            s.list_runs(status="ok")
        with pytest.raises(WdlabError, match="sweep_id 'nope'"):
            s.create_run(workload="mlp", config={}, seed=0, sweep_id="nope")


def test_delete_run_removes_its_rows(db: Path) -> None:
    with Store(db) as s:
        keep = s.create_run(workload="mlp", config={}, seed=0)
        gone = s.create_run(workload="mlp", config={}, seed=1)
        for rid in (keep, gone):
            s.log_metrics(rid, 0, {"loss": 1.0})
            s.add_artifact(rid, "checkpoint", f"/tmp/{rid}.pt")
        s.delete_run(gone)
        with pytest.raises(WdlabError, match=f"no run '{gone}'"):
            s.get_run(gone)
        with pytest.raises(WdlabError, match=f"no run '{gone}'"):
            s.delete_run(gone)
        assert s.metrics(keep) == {"loss": [(0, 1.0)]}
    assert _raw_rows(db, "SELECT COUNT(*) FROM metrics WHERE run_id = ?", (gone,)) == [(0,)]
    assert _raw_rows(db, "SELECT COUNT(*) FROM artifacts WHERE run_id = ?", (gone,)) == [(0,)]
    assert _raw_rows(db, "SELECT COUNT(*) FROM artifacts") == [(1,)]


# ------------------------------------------------------------------------------ metrics


def test_metrics_round_trip(db: Path) -> None:
    logged: dict[str, dict[int, float]] = {"loss": {}, "acc": {}, "grad_norm": {}}
    with Store(db) as s:
        rid = s.create_run(workload="mlp", config={}, seed=0)
        for step in [3, 0, 2, 1, 4]:  # out of order: reads must sort by step
            vals = {
                "loss": 1.0 / (step + 1),
                "grad_norm": [0.5, math.inf, math.nan, -math.inf, 2.0][step],
            }
            if step % 2 == 0:
                vals["acc"] = step / 10
            s.log_metrics(rid, step, vals)
            for k, v in vals.items():
                logged[k][step] = v
        s.log_metrics(rid, 6, {"loss": 0.1})  # loss ahead of the others
        logged["loss"][6] = 0.1
        s.log_metrics(rid, 2, {"acc": 0.9})  # re-logging a step replaces it
        logged["acc"][2] = 0.9

        got = s.metrics(rid)
        assert set(got) == set(logged)
        for name, by_step in logged.items():
            steps = [st for st, _ in got[name]]
            assert steps == sorted(by_step)
            for st, v in got[name]:
                want = by_step[st]
                assert (math.isnan(v) and math.isnan(want)) or v == want
        assert s.metrics(rid, names=["acc"]) == {"acc": sorted(logged["acc"].items())}
        assert s.metric_names(rid) == ["acc", "grad_norm", "loss"]
        last = s.last_metrics(rid)
        assert last == {"loss": 0.1, "acc": logged["acc"][4], "grad_norm": 2.0}
        # reads accept the name / prefix like get_run
        assert s.metric_names("mlp-1") == ["acc", "grad_norm", "loss"]


def test_nonfinite_values_round_trip_at_last_step(db: Path) -> None:
    with Store(db) as s:
        rid = s.create_run(workload="mlp", config={}, seed=0)
        s.log_metrics(rid, 0, {"a": 1.0, "b": 1.0, "c": 1.0})
        s.log_metrics(rid, 1, {"a": math.nan, "b": math.inf, "c": -math.inf})
        last = s.last_metrics(rid)
    assert math.isnan(last["a"]) and last["b"] == math.inf and last["c"] == -math.inf


def test_log_metrics_validation(db: Path) -> None:
    with Store(db) as s:
        rid = s.create_run(workload="mlp", config={}, seed=0)
        with pytest.raises(WdlabError, match="no run 'deadbeef'"):
            s.log_metrics("deadbeef", 0, {"loss": 1.0})
        with pytest.raises(WdlabError, match="metric 'loss' must be a number"):
            s.log_metrics(rid, 0, {"loss": "high"})  # type: ignore[dict-item]
        with pytest.raises(WdlabError, match="step must be an integer"):
            s.log_metrics(rid, 1.5, {"loss": 1.0})  # type: ignore[arg-type]


def test_metrics_are_buffered_until_flush(db: Path) -> None:
    s = Store(db, flush_rows=10, flush_seconds=1e9)
    rid = s.create_run(workload="mlp", config={}, seed=0)
    count = "SELECT COUNT(*) FROM metrics"
    for step in range(3):
        s.log_metrics(rid, step, {"loss": float(step)})
    assert _raw_rows(db, count) == [(0,)]  # another connection sees nothing yet
    assert len(s.metrics(rid)["loss"]) == 3  # the store itself reads its own writes
    assert _raw_rows(db, count) == [(3,)]
    for step in range(3, 12):  # 9 more rows: buffer reaches 9 < 10, not flushed
        s.log_metrics(rid, step, {"loss": float(step)})
    assert _raw_rows(db, count) == [(3,)]
    s.log_metrics(rid, 12, {"loss": 12.0})  # 10th buffered row: flushed automatically
    assert _raw_rows(db, count) == [(13,)]
    s.log_metrics(rid, 13, {"loss": 13.0})
    s.close()  # close writes the rest
    assert _raw_rows(db, count) == [(14,)]
    with pytest.raises(WdlabError, match="is closed"):
        s.get_run(rid)


def test_flush_seconds_zero_writes_every_call(db: Path) -> None:
    with Store(db, flush_seconds=0) as s:
        rid = s.create_run(workload="mlp", config={}, seed=0)
        s.log_metrics(rid, 0, {"loss": 1.0})
        assert _raw_rows(db, "SELECT step, value FROM metrics") == [(0, 1.0)]


def test_flush_keeps_rows_of_live_runs_when_a_run_was_deleted(db: Path) -> None:
    a = Store(db, flush_seconds=1e9)
    b = Store(db)
    r1 = a.create_run(workload="mlp", config={}, seed=0)
    r2 = a.create_run(workload="mlp", config={}, seed=1)
    a.log_metrics(r1, 0, {"loss": 1.0})
    a.log_metrics(r2, 0, {"loss": 2.0})
    b.delete_run(r2)  # another process deletes r2 while a still buffers its rows
    with pytest.raises(WdlabError, match=f"deleted run\\(s\\) {r2}"):
        a.flush()
    assert _raw_rows(db, "SELECT run_id, value FROM metrics") == [(r1, 1.0)]
    a.close()
    b.close()


# ------------------------------------------------------------------------------ artifacts


def test_artifacts_round_trip(db: Path, tmp_path: Path) -> None:
    with Store(db) as s:
        rid = s.create_run(workload="mlp", config={}, seed=0)
        s.add_artifact(rid, "checkpoint", tmp_path / "step100.pt")
        s.add_artifact(rid, "plot", "plots/loss.png")
        s.add_artifact(rid, "checkpoint", tmp_path / "step200.pt")
        arts = s.artifacts(rid)
        assert [(a.kind, a.path) for a in arts] == [
            ("checkpoint", str(tmp_path / "step100.pt")),
            ("plot", "plots/loss.png"),
            ("checkpoint", str(tmp_path / "step200.pt")),
        ]
        assert all(a.run_id == rid for a in arts)
        assert [a.path for a in s.artifacts(rid, kind="plot")] == ["plots/loss.png"]
        with pytest.raises(WdlabError, match="no run 'nope'"):
            s.add_artifact("nope", "plot", "x.png")


# ------------------------------------------------------------------------------ file-level


def test_wal_mode_and_pragmas(db: Path) -> None:
    with Store(db) as s:
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert s.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    # WAL is a property of the file: a plain connection sees it too
    assert _raw_rows(db, "PRAGMA journal_mode") == [("wal",)]
    assert _raw_rows(db, "SELECT value FROM meta WHERE key='schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]


def test_missing_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "runs.db"
    with Store(path) as s:
        s.create_run(workload="mlp", config={}, seed=0)
    assert path.is_file()
    assert store_path_default() == DEFAULT_PATH == "wdlab.db"


def test_non_sqlite_file_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 40)
    with pytest.raises(WdlabError) as err:
        Store(path)
    msg = str(err.value)
    assert msg.startswith(f"{path} is not a wdlab store (not an SQLite database): ")
    assert "\n" not in msg
    assert path.read_text().startswith("these are my notes")  # untouched


def test_other_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(WdlabError, match="not a wdlab store .*users"):
        Store(path)


def test_newer_schema_is_refused(db: Path) -> None:
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
    )
    conn.commit()
    conn.close()
    with pytest.raises(WdlabError) as err:
        Store(db)
    msg = str(err.value)
    assert str(db) in msg and f"schema version {SCHEMA_VERSION + 1}" in msg
    assert "upgrade wdlab" in msg and "\n" not in msg


def test_directory_as_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WdlabError, match="is a directory"):
        Store(tmp_path)


def test_copy_reopens_same_file(db: Path) -> None:
    with Store(db) as s:
        rid = s.create_run(workload="mlp", config={}, seed=0)
        with copy.copy(s) as other:  # the same path reopened (how a Store crosses processes)
            assert other is not s and other.get_run(rid).id == rid


def _child_logs(store: Store, run_id: str) -> None:
    for step in range(100, 110):
        store.log_metrics(run_id, step, {"loss": -1.0})
    store.close()


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_child_uses_its_own_connection(db: Path) -> None:
    import multiprocessing

    s = Store(db, flush_seconds=1e9)
    rid = s.create_run(workload="mlp", config={}, seed=0)
    s.log_metrics(rid, 0, {"loss": 1.0})  # buffered in the parent when it forks
    child = multiprocessing.get_context("fork").Process(target=_child_logs, args=(s, rid))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    s.log_metrics(rid, 1, {"loss": 2.0})
    s.close()
    got = _raw_rows(db, "SELECT step, value FROM metrics ORDER BY step")
    assert got == [(0, 1.0), (1, 2.0)] + [(k, -1.0) for k in range(100, 110)]


def test_crash_inside_a_transaction_leaves_no_rows(db: Path) -> None:
    with Store(db) as s:
        rid = s.create_run(workload="mlp", config={}, seed=0)
    script = """
        import os, sys
        from wdlab.store import Store
        s = Store(sys.argv[1], flush_seconds=1e9)
        for step in range(50):
            s.log_metrics(sys.argv[2], step, {"loss": float(step)})
        s.flush()                      # committed: must survive
        for step in range(50, 100):
            s.log_metrics(sys.argv[2], step, {"loss": float(step)})
        def half_then_die(c):
            c.executemany("INSERT INTO metrics VALUES (?, 'loss', ?, 0.0)",
                          [(sys.argv[2], k) for k in range(100, 200)])
            os._exit(0)                # killed mid-transaction: none of these may appear
        s._transact(half_then_die)
    """
    _wait_all([_run_script(script, str(db), rid)])
    steps = [r[0] for r in _raw_rows(db, "SELECT step FROM metrics ORDER BY step")]
    assert steps == list(range(50))
    with Store(db) as s:  # the store opens cleanly after the crash
        assert len(s.metrics(rid)["loss"]) == 50


# ------------------------------------------------------------------------------ concurrency

_WRITER = """
    import sys
    from wdlab.store import Store
    path, tag, n_runs, n_steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with Store(path, flush_rows=7) as s:
        for r in range(n_runs):
            rid = s.create_run(workload="mlp", config={"tag": tag, "r": r}, seed=r)
            for step in range(n_steps):
                s.log_metrics(rid, step, {"loss": step + 0.5, "acc": r + step / 1000})
            s.update_run(rid, status="finished", result={"tag": tag})
            print(rid, flush=True)
"""


def test_two_processes_write_concurrently(db: Path) -> None:
    Store(db).close()  # both workers also race to open; schema creation is covered below
    n_runs, n_steps = 6, 60
    outs = _wait_all([_run_script(_WRITER, str(db), t, str(n_runs), str(n_steps)) for t in "AB"])
    ids = [line for out in outs for line in out.split()]
    assert len(ids) == len(set(ids)) == 2 * n_runs
    with Store(db) as s:
        runs = s.list_runs()
        assert sorted(r.id for r in runs) == sorted(ids)
        assert all(r.status == "finished" for r in runs)
        # default names are drawn inside the insert transaction: unique across processes
        assert sorted(r.name for r in runs) == sorted(f"mlp-{i}" for i in range(1, 2 * n_runs + 1))
        for r in runs:
            m = s.metrics(r.id)
            assert m["loss"] == [(k, k + 0.5) for k in range(n_steps)]
            assert m["acc"] == [(k, r.config["r"] + k / 1000) for k in range(n_steps)]
    total = _raw_rows(db, "SELECT COUNT(*) FROM metrics")[0][0]
    assert total == 2 * n_runs * n_steps * 2


def test_two_processes_create_a_fresh_store(tmp_path: Path) -> None:
    db = tmp_path / "fresh" / "wdlab.db"  # neither the file nor its directory exists
    outs = _wait_all([_run_script(_WRITER, str(db), t, "2", "5") for t in "AB"])
    assert len({line for out in outs for line in out.split()}) == 4
    assert _raw_rows(db, "SELECT COUNT(*) FROM metrics") == [(4 * 5 * 2,)]


_CLAIMER = """
    import json, sys
    from wdlab.store import Store
    path, sweep, worker = sys.argv[1], sys.argv[2], sys.argv[3]
    got = []
    with Store(path) as s:
        while (t := s.claim_trial(sweep, worker)) is not None:
            assert t.status == "running" and t.worker == worker
            rid = s.create_run(workload="mlp", config=t.params, seed=0, sweep_id=sweep)
            s.finish_trial(sweep, t.trial_index, run_id=rid)
            got.append(t.trial_index)
    print(json.dumps(got))
"""


def test_claim_trial_from_two_processes(db: Path) -> None:
    n = 40
    with Store(db) as s:
        sweep = s.create_sweep(spec={"lr": "grid"}, trials=[{"lr": 2.0**-k} for k in range(n)])
    workers = ["w0", "w1", "w2"]
    outs = _wait_all([_run_script(_CLAIMER, str(db), sweep, w) for w in workers])
    claimed = {w: json.loads(o) for w, o in zip(workers, outs, strict=True)}
    flat = [i for got in claimed.values() for i in got]
    assert sorted(flat) == list(range(n))  # every trial exactly once
    with Store(db) as s:
        trials = s.trials(sweep)
        assert [t.trial_index for t in trials] == list(range(n))
        for t in trials:
            assert t.status == "finished" and t.trial_index in claimed[t.worker]
            run = s.get_run(t.run_id)
            assert run.sweep_id == sweep and run.config == {"lr": 2.0**-t.trial_index}
        assert s.claim_trial(sweep, "late") is None


def test_sweep_and_trial_lifecycle(db: Path) -> None:
    with Store(db) as s:
        sid = s.create_sweep(spec={"grid": {"lr": [0.1, 0.2]}}, trials=[{"lr": 0.1}, {"lr": 0.2}])
        assert s.get_sweep(sid).name == "sweep-1" and s.get_sweep("sweep-1").id == sid
        assert s.get_sweep(sid).spec == {"grid": {"lr": [0.1, 0.2]}}
        assert s.add_trials(sid, [{"lr": 0.4}]) == [2]
        assert [t.params for t in s.trials(sid)] == [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.4}]
        assert all(t.status == "pending" and t.worker is None for t in s.trials(sid))

        t0 = s.claim_trial(sid, "alpha")
        t1 = s.claim_trial(sid, "beta")
        assert (t0.trial_index, t1.trial_index) == (0, 1)
        assert t0.heartbeat is not None
        rid = s.create_run(workload="mlp", config={}, seed=0, sweep_id=sid)
        assert s.heartbeat_trial(sid, 0, "alpha", run_id=rid)
        assert not s.heartbeat_trial(sid, 0, "beta")  # not beta's trial
        s.finish_trial(sid, 0, status="diverged", error="loss is nan")
        t = s.trials(sid, status="diverged")[0]
        assert (t.trial_index, t.run_id, t.error) == (0, rid, "loss is nan")

        # beta died: its running trial goes back to pending and is claimed again
        assert s.requeue_stale_trials(sid, older_than=3600) == []
        assert s.requeue_stale_trials(sid, older_than=0) == [1]
        assert s.claim_trial(sid, "gamma").trial_index == 1
        assert s.claim_trial(sid, "gamma").trial_index == 2
        assert s.claim_trial(sid, "gamma") is None

        with pytest.raises(WdlabError, match="status='running'.*finished, failed, diverged"):
            s.finish_trial(sid, 1, status="running")
        with pytest.raises(WdlabError, match="no trial 9"):
            s.finish_trial(sid, 9)
        with pytest.raises(WdlabError, match="no sweep 'nope'"):
            s.claim_trial("nope", "w")
        s.update_sweep(sid, status="finished")
        assert s.list_sweeps()[0].status == "finished"
        s.delete_sweep(sid)
        assert s.get_run(rid).sweep_id is None  # the run outlives its sweep
        assert s.list_sweeps() == []


# ------------------------------------------------------------------------------ exporters


def _logged_run(s: Store) -> str:
    rid = s.create_run(workload="mlp", config={"lr": 0.01}, seed=0)
    for step in range(0, 50, 5):
        s.log_metrics(rid, step, {"train/loss": 2.0 / (step + 1), "lr": 0.01 * (1 - step / 50)})
    s.log_metrics(rid, 50, {"train/loss": math.nan, "lr": math.inf})
    return rid


def test_export_csv_matches_metrics(db: Path, tmp_path: Path) -> None:
    with Store(db) as s:
        rid = _logged_run(s)
        out = s.export_csv(rid, tmp_path / "out" / "metrics.csv")
        want = s.metrics(rid)
    with out.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "name", "value"]
    got: dict[str, list[tuple[int, float]]] = {}
    for step, name, value in rows[1:]:
        got.setdefault(name, []).append((int(step), float(value)))
    assert set(got) == set(want)
    for name in want:
        assert [st for st, _ in got[name]] == [st for st, _ in want[name]]
        for (_, a), (_, b) in zip(got[name], want[name], strict=True):
            assert (math.isnan(a) and math.isnan(b)) or a == b
    assert [int(r[0]) for r in rows[1:]] == sorted(int(r[0]) for r in rows[1:])
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.csv"]  # no temp left


def test_export_tensorboard_reads_back(db: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    np = pytest.importorskip("numpy")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with Store(db) as s:
        rid = _logged_run(s)
        logdir = s.export_tensorboard(rid, tmp_path / "tb" / "run")
        want = s.metrics(rid)
    assert any(p.name.startswith("events.out.tfevents") for p in logdir.iterdir())
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == set(want)
    for name, pts in want.items():
        events = acc.Scalars(name)
        assert [e.step for e in events] == [st for st, _ in pts]
        for e, (_, v) in zip(events, pts, strict=True):
            v32 = float(np.float32(v))  # TensorBoard stores float32
            assert (math.isnan(e.value) and math.isnan(v32)) or e.value == v32
    with Store(db) as s, pytest.raises(WdlabError, match="already holds TensorBoard events"):
        s.export_tensorboard(rid, logdir)  # a second export would duplicate every point


def test_export_tensorboard_without_tensorboard(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with Store(db) as s:
        rid = _logged_run(s)
        with pytest.raises(WdlabError, match="pip install 'tensorboard"):
            s.export_tensorboard(rid, tmp_path / "tb")


def test_foreign_sqlite_file_is_refused_unchanged(tmp_path: Path) -> None:
    """Another program's SQLite file is refused before any pragma could rewrite its header."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE foo (x)")
    before = path.read_bytes()
    with pytest.raises(WdlabError, match="not a wdlab store"):
        Store(path).conn  # noqa: B018 - opening is the point
    assert path.read_bytes() == before  # still in rollback-journal mode: header byte 18 == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]
