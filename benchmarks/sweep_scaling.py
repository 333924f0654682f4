"""How well sweeps scale: 2 local workers vs 1 (trials per hour), and Ray vs the local pool.

    python benchmarks/sweep_scaling.py                  # teacher, 8 trials of 300 steps
    python benchmarks/sweep_scaling.py --threads 1      # one torch thread per trial everywhere
    python benchmarks/sweep_scaling.py --steps 200 --trials 4 --no-ray

Targets on a 2-core machine: 2 workers >= 1.7x the trials per hour of 1 worker; Ray's wall
time <= 1.10x the local pool's at the same worker count. Wall time is the whole run_sweep
call (worker start-up included, as a user sees it); Ray's cluster start is measured apart,
since one cluster serves many sweeps. Every sweep writes to a fresh store in a temp folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from wdlab.sweep import SweepSpec, run_sweep


def _spec(steps: int, trials: int, threads: int | None) -> SweepSpec:
    lrs = [1e-3 * 2**i for i in range(max(trials // 2, 1))]
    fixed = [f"steps={steps}", "train.stop_at_target=false", 'train.monitor="off"']
    if threads is not None:
        fixed.append(f"train.threads={threads}")
    return SweepSpec.create(
        workload="teacher",
        axes={"optimizer.lr": lrs},
        seeds=2 if trials > 1 else 1,
        assignments=fixed,
    )


def _timed(spec: SweepSpec, root: Path, label: str, **kwargs: object) -> float:
    start = time.perf_counter()
    summary = run_sweep(spec, root / f"{label}.db", progress=False, **kwargs)  # type: ignore[arg-type]
    wall = time.perf_counter() - start
    ended = summary.counts["finished"] + summary.counts["diverged"]
    if ended != len(summary.trials):
        errors = {t.error for t in summary.trials if t.error}
        raise SystemExit(f"{label}: not every trial ended well: {summary.counts} {errors}")
    per_hour = len(summary.trials) / wall * 3600
    print(f"{label:<14} {len(summary.trials)} trials  {wall:7.2f} s  {per_hour:8.0f} trials/h")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument(
        "--threads",
        type=int,
        help="pin every trial's torch threads (default: cores // workers, as wdlab does)",
    )
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--no-local-x1", action="store_true", help="skip the 1-worker sweep")
    args = parser.parse_args()
    spec = _spec(args.steps, args.trials, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        two = _timed(spec, root, "local x2", workers=2)
        if not args.no_local_x1:
            one = _timed(spec, root, "local x1", workers=1)
            print(f"2 workers vs 1: {one / two:.2f}x trials per hour (target >= 1.7x)")
        if args.no_ray:
            return
        try:
            import ray
        except ImportError:
            print("ray is not installed: pip install wdlab[ray]")
            return
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        print(f"ray.init(num_cpus=2): {time.perf_counter() - start:.1f} s")
        try:
            on_ray = _timed(spec, root, "ray x2", workers=2, backend="ray")
        finally:
            ray.shutdown()
        print(f"ray vs local pool (2 workers): {on_ray / two:.2f}x wall time (target <= 1.10x)")


if __name__ == "__main__":
    main()
