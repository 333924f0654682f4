"""How well sweeps scale: 2 local workers vs 1 (trials per hour), and Ray vs the local pool.

    python benchmarks/sweep_scaling.py                  # teacher, 12 trials of 600 steps
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


def _spec(steps: int, trials: int) -> SweepSpec:
    lrs = [1e-3 * 2**i for i in range(max(trials // 2, 1))]
    return SweepSpec.create(
        workload="teacher",
        axes={"optimizer.lr": lrs},
        seeds=2 if trials > 1 else 1,
        assignments=[f"steps={steps}", "train.stop_at_target=false", 'train.monitor="off"'],
    )


def _timed(spec: SweepSpec, root: Path, label: str, **kwargs: object) -> float:
    start = time.perf_counter()
    summary = run_sweep(spec, root / f"{label}.db", progress=False, **kwargs)  # type: ignore[arg-type]
    wall = time.perf_counter() - start
    ended = summary.counts["finished"] + summary.counts["diverged"]
    assert ended == len(summary.trials), summary.counts
    per_hour = len(summary.trials) / wall * 3600
    print(f"{label:<14} {len(summary.trials)} trials  {wall:7.2f} s  {per_hour:8.0f} trials/h")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    spec = _spec(args.steps, args.trials)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        one = _timed(spec, root, "local x1", workers=1)
        two = _timed(spec, root, "local x2", workers=2)
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
