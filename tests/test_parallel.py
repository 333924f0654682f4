"""`wdlab run` on 2 gloo ranks (DDP and FSDP2) against one process on the same global batch;
SIGKILL of a rank mid-checkpoint then --resume against an uninterrupted 2-rank run; sharded
checkpoints resharded 2 -> 1, 1 -> 2 and continued 2 -> 2; a failing rank ending the job with
one line.

Each scenario is one launch (module-scoped fixtures), on charlm's tiny recipe: 12 steps,
a checkpoint every 4 (none by wall time, so runs are deterministic), one thread per rank, an
EMA weight average kept and evaluated beside the raw weights (every comparison covers the
averaged weights and their avg_val_* metrics too), an evaluation every 5 steps (so FSDP2
trains on after an evaluation: the reshard wdlab.parallel.reshard does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from wdlab import parallel
from wdlab.cli import main as wdlab_main
from wdlab.store import Store

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)

FAULT = str(Path(__file__).with_name("parallel_fault.py"))
RUN = ["run", "charlm", "--tiny", "--steps", "12", "--lr", "1e-3", "--threads", "1", "--quiet",
       "--set", "train.checkpoint_every=4", "--set", "train.checkpoint_seconds=0",
       "--set", "train.eval_every=5", "--set", "train.stop_at_target=false",
       "--set", "train.average=ema:0.9"]
PARTS = ("/model/", "/optimizer/", "/average/")
REL = 1e-5
"""fp32, relative, for metrics (train loss, gradient norm, val loss), weights and optimizer
state: a 2-rank run against one process on the same global batch. Measured at lr 1e-3
(docs/running.md): metrics <= 1.0e-7, weights <= 6.1e-8, Adam moments <= 4.3e-7 -- the order
of the batch mean (two half-batch means averaged). At the recipe's lr 1e-2 the first steps
of tiny charlm amplify that rounding (Adam divides near-zero attention gradients by their
sqrt(v)): 4e-5 in the weights after 12 steps, so the test trains at 1e-3."""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _launch(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=_env())


def _nproc(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _launch([sys.executable, "-m", "wdlab", *args, "--nproc", "2"], cwd)


def _one(cwd: Path, *args: str) -> None:
    cwd.mkdir(parents=True, exist_ok=True)
    old = Path.cwd()
    os.chdir(cwd)
    try:
        assert wdlab_main(list(args)) == 0
    finally:
        os.chdir(old)


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-3000:]}"


def _only_run(where: Path) -> str:
    with Store(where / "wdlab.db") as store:
        (run,) = store.list_runs()
        return run.id


def _state(where: Path, run_id: str) -> dict[str, torch.Tensor]:
    """Every tensor of the run's checkpoint (model, optimizer, weight average), by path, as
    whole tensors."""
    run_dir = where / "wdlab-runs" / run_id
    if (run_dir / parallel.SINGLE_FILE).exists():
        payload = torch.load(run_dir / parallel.SINGLE_FILE, weights_only=True)
    else:
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        flat = where / "flat.pt"
        with warnings.catch_warnings():  # "no process group: loading in a single process"
            warnings.simplefilter("ignore", UserWarning)
            dcp_to_torch_save((run_dir / parallel.SHARDED_LINK).resolve(), flat)
        payload = torch.load(flat, weights_only=True)
        flat.unlink()
        return {k: v for k, v in payload.items() if k.startswith(PARTS)}
    tensors: dict[str, torch.Tensor] = {}
    parallel._split({k: payload[k] for k in ("model", "optimizer", "average")}, "", tensors)
    return tensors


def _metrics(where: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    with Store(where / "wdlab.db") as store:
        rows = store.metrics(run_id)
    return {k: v for k, v in rows.items() if k not in ("train_seconds",)}


def _max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "/") -> float:
    """The largest relative difference ||a - b|| / ||b|| over the tensors under `prefix`."""
    assert a.keys() == b.keys()
    worst = 0.0
    for key in (k for k in a if k.startswith(prefix)):
        x, y = a[key].double(), b[key].double()
        if x.is_floating_point() and x.numel():
            worst = max(worst, float((x - y).norm() / y.norm().clamp_min(1e-30)))
    return worst


def _metrics_rel(a: dict, b: dict, names: tuple[str, ...]) -> float:
    worst = 0.0
    for name in names:
        steps_a, steps_b = [s for s, _ in a[name]], [s for s, _ in b[name]]
        assert steps_a == steps_b, name
        for (_, x), (_, y) in zip(a[name], b[name], strict=True):
            worst = max(worst, abs(x - y) / max(abs(y), 1e-30))
    return worst


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parallel")


@pytest.fixture(scope="module")
def one(root: Path) -> Path:
    """One process, 12 steps; `one-16` and `one-20` hold it extended (one process) to 16
    and then 20 steps, the references of the resharded runs."""
    _one(root / "one", *RUN)
    run_id = _only_run(root / "one")
    shutil.copytree(root / "one", root / "one-16")
    _one(root / "one-16", "run", "--resume", run_id, "--steps", "16", "--quiet")
    shutil.copytree(root / "one-16", root / "one-20")
    _one(root / "one-20", "run", "--resume", run_id, "--steps", "20", "--quiet")
    return root / "one"


@pytest.fixture(scope="module")
def ddp(root: Path) -> Path:
    """2 ranks, DDP (`wdlab run --nproc 2`), 12 steps."""
    _ok(_nproc(root / "ddp", *RUN))
    return root / "ddp"


@pytest.fixture(scope="module")
def fsdp(root: Path, one: Path) -> Path:
    """1 -> 2: the one-process run's last.pt continued under FSDP2 on 2 ranks (raw torchrun)
    from step 12 to 16."""
    where = root / "fsdp"
    shutil.copytree(one, where)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "wdlab", "run", "--resume", _only_run(one), "--steps", "16", "--quiet",
           "--set", "train.parallel=fsdp"]
    _ok(_launch(cmd, where))
    return where


def _compare(where: Path, ref: Path, label: str) -> None:
    """`where`'s run equals `ref`'s (one process) to fp32 rounding: metrics (the averaged
    weights' avg_val_loss too), weights, optimizer state, the weight average."""
    run_id, ref_id = _only_run(where), _only_run(ref)
    got, expected = _metrics(where, run_id), _metrics(ref, ref_id)
    assert got.keys() == expected.keys()
    rel_metrics = _metrics_rel(got, expected, ("train_loss", "grad_norm", "val_loss"))
    rel_avg_metrics = _metrics_rel(got, expected, ("avg_val_loss", "avg_val_rankme"))
    state, ref_state = _state(where, run_id), _state(ref, ref_id)
    rel_model = _max_rel(state, ref_state, "/model/")
    rel_optim = _max_rel(state, ref_state, "/optimizer/")
    rel_avg = _max_rel(state, ref_state, "/average/")
    print(f"{label}: metrics {rel_metrics:.1e}, weights {rel_model:.1e}, "
          f"optimizer {rel_optim:.1e}, average {rel_avg:.1e}, avg metrics {rel_avg_metrics:.1e}")
    losses = [value for _, value in expected["train_loss"]]
    assert losses[0] - losses[-1] > 0.1  # the runs compared learned: not two no-ops
    # the average is not the raw weights (else its comparison would repeat the weights')
    assert abs(expected["avg_val_loss"][-1][1] - expected["val_loss"][-1][1]) > 0.01
    assert any(k.startswith("/average/params/") for k in state)
    assert rel_metrics < REL and rel_model < REL and rel_optim < REL
    assert rel_avg < REL and rel_avg_metrics < REL
    with Store(where / "wdlab.db") as store:
        assert store.get_run(run_id).status == "finished"


def test_ddp_on_two_ranks_equals_one_process(one: Path, ddp: Path) -> None:
    _compare(ddp, one, "ddp")
    run_dir = ddp / "wdlab-runs" / _only_run(ddp)
    assert (run_dir / parallel.SHARDED_LINK).resolve().is_dir()
    assert len(_metrics(ddp, _only_run(ddp))["train_loss"]) == 12


def test_single_file_checkpoint_continues_under_fsdp_on_two_ranks(root: Path, fsdp: Path) -> None:
    """1 -> 2, and FSDP2 training equal to one process: steps 13-16 as one process takes
    them; the sharded checkpoint replaces last.pt."""
    _compare(fsdp, root / "one-16", "fsdp 1->2")
    run_dir = fsdp / "wdlab-runs" / _only_run(fsdp)
    assert (run_dir / parallel.SHARDED_LINK).resolve().is_dir()
    assert not (run_dir / parallel.SINGLE_FILE).exists()


def test_sharded_checkpoint_continues_on_one_process(root: Path, fsdp: Path) -> None:
    """2 -> 1: the FSDP2 run's DCP shards load into one process, which goes on to step 20
    like the one-process run, and leaves a single-file checkpoint. (copytree turns the
    last.dcp link into a folder, as `cp -r` would: that is read too.)"""
    where = root / "fsdp-to-one"
    shutil.copytree(fsdp, where)
    run_id = _only_run(where)
    _one(where, "run", "--resume", run_id, "--steps", "20", "--quiet")
    _compare(where, root / "one-20", "2->1")
    run_dir = where / "wdlab-runs" / run_id
    assert [p.name for p in run_dir.iterdir()] == [parallel.SINGLE_FILE]


def test_sharded_checkpoint_continues_on_two_ranks(root: Path, fsdp: Path) -> None:
    """2 -> 2: the FSDP2 run stopped at its budget (16) and resumed under FSDP2 to step 20
    loads its DCP shards (the weight average's too) and goes on like one process."""
    where = root / "fsdp-to-two"
    shutil.copytree(fsdp, where)
    run_id = _only_run(where)
    _ok(_nproc(where, "run", "--resume", run_id, "--steps", "20", "--quiet",
               "--set", "train.parallel=fsdp"))
    _compare(where, root / "one-20", "fsdp 2->2")


def test_sigkill_of_a_rank_mid_checkpoint_then_resume_is_bit_identical(
    root: Path, ddp: Path
) -> None:
    """Rank 1 is SIGKILLed as it starts writing the step-8 checkpoint: that checkpoint never
    becomes visible, the job ends, and --resume (2 ranks) continues from step 4 to the same
    bits and the same metric rows as the uninterrupted 2-rank run."""
    where = root / "kill"
    proc = _launch([sys.executable, FAULT, "kill", "1", "8", "--launch", "2", *RUN], where)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "wdlab: error: another rank stopped without a word"), proc.stderr[-3000:]
    run_id = _only_run(where)
    run_dir = where / "wdlab-runs" / run_id
    link = run_dir / parallel.SHARDED_LINK
    assert os.readlink(link).startswith("ckpt-00000004-")
    _ok(_nproc(where, "run", "--resume", run_id, "--quiet"))
    assert os.readlink(link).startswith("ckpt-00000012-")
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([os.readlink(link), link.name])
    expected, got = _state(ddp, _only_run(ddp)), _state(where, run_id)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert _metrics(where, run_id) == _metrics(ddp, _only_run(ddp))


def test_a_failing_rank_ends_the_job_with_one_line(root: Path) -> None:
    """Rank 1 raises a user error at step 3: rank 0 prints that one line, exit code 2."""
    where = root / "error"
    proc = _launch([sys.executable, FAULT, "error", "1", "3", "--launch", "2", *RUN], where)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines == [
        "wdlab: error: rank 1: data shard missing on the node of rank 1; copy the data to "
        "every node"
    ], proc.stderr[-3000:]
    assert proc.stdout == ""
    with Store(where / "wdlab.db") as store:
        (run,) = store.list_runs()
        assert run.status == "failed"
        assert "rank 1: data shard missing" in run.message
