"""Data-parallel step time: `wdlab run charlm --nproc 2` (one thread per rank) against one
process with 2 threads, on the same global batch; and the communication share.

    python benchmarks/train_parallel.py                    # charlm, 3 rounds of 60 steps
    python benchmarks/train_parallel.py --rounds 5 --steps 100 --parallel fsdp
    python benchmarks/train_parallel.py --rounds 1 --steps 30   # a quick look

Three kinds of run, each a real `wdlab run` command (monitor off, no checkpoints, evaluation
excluded from the timed seconds):
  "1 proc x 2 threads"  the whole global batch in one process, torch using 2 threads;
  "2 ranks x 1 thread"  `--nproc 2 --threads 1`: each rank takes half the batch, DDP (or
                        FSDP2) averages the gradients, the loop agrees on its decisions;
  "1 proc x 1 thread, half batch"  what one rank computes, with no communication at all.
Step time is the slope of the run's own train_seconds between its first and last evaluation
(the first steps, with their one-off costs, are left out). The ratio is
(2 ranks) / (1 proc x 2 threads): below 1 means the ranks are faster. The communication
share is the part of a rank's step that is not its own compute,
((2 ranks) - (half batch, 1 thread)) / (2 ranks): gradient all-reduce, the per-step
agreement, and waiting for the slower rank. Rounds run every kind once, in an order rotated
from round to round; the verdict is the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from wdlab.store import Store

KINDS = ("1 proc x 2 threads", "2 ranks x 1 thread", "1 proc x 1 thread, half batch")


def _command(kind: str, steps: int, batch: int, parallel: str) -> list[str]:
    every = max(steps // 6, 1)
    cmd = [sys.executable, "-m", "wdlab", "run", "charlm", "--steps", str(steps), "--quiet",
           "--monitor", "off", "--set", f"train.eval_every={every}",
           "--set", "train.checkpoint_every=0", "--set", "train.checkpoint_seconds=0",
           "--set", "train.stop_at_target=false", "--set", f"train.parallel={parallel}"]
    if kind == KINDS[0]:
        return [*cmd, "--threads", "2", "--set", f"data.batch_size={batch}"]
    if kind == KINDS[1]:
        return [*cmd, "--threads", "1", "--nproc", "2", "--set", f"data.batch_size={batch}"]
    return [*cmd, "--threads", "1", "--set", f"data.batch_size={batch // 2}"]


def _step_seconds(kind: str, steps: int, batch: int, parallel: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1" if kind != KINDS[0] else "2"}
        proc = subprocess.run(_command(kind, steps, batch, parallel), cwd=tmp, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{kind}: rc {proc.returncode}: {proc.stderr[-2000:]}")
        with Store(Path(tmp) / "wdlab.db") as store:
            (run,) = store.list_runs()
            points = store.metrics(run.id, ["train_seconds"])["train_seconds"]
    (first_step, first), (last_step, last) = points[0], points[-1]
    return (last - first) / (last_step - first_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32, help="global batch (charlm's is 32)")
    parser.add_argument("--parallel", choices=["ddp", "fsdp"], default="ddp")
    args = parser.parse_args()
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    ratios, shares = [], []
    for r in range(args.rounds):
        order = KINDS[r % 3:] + KINDS[:r % 3]
        got = {kind: _step_seconds(kind, args.steps, args.batch, args.parallel) for kind in order}
        for kind, value in got.items():
            times[kind].append(value)
        ratios.append(got[KINDS[1]] / got[KINDS[0]])
        shares.append((got[KINDS[1]] - got[KINDS[2]]) / got[KINDS[1]])
        print(f"round {r + 1}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in got.items())
              + f"; ratio {ratios[-1]:.2f}, communication {shares[-1]:.0%}", flush=True)
    print(f"\ncharlm, global batch {args.batch}, {args.parallel}, {args.steps} steps, "
          f"median of {args.rounds} rounds")
    print("| run | step time (ms) |")
    print("|---|---|")
    for kind in KINDS:
        print(f"| {kind} | {statistics.median(times[kind]) * 1e3:.1f} |")
    print(f"\n2 ranks / (1 proc x 2 threads): {statistics.median(ratios):.2f} (median); "
          f"communication share of a rank's step: {statistics.median(shares):.0%}")


if __name__ == "__main__":
    main()
