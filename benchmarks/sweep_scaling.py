"""How well sweeps scale: 2 local workers vs 1 (trials per hour), and Ray vs the local pool.

    python benchmarks/sweep_scaling.py            # teacher, 32 trials x 3000 steps, 3 rounds
    python benchmarks/sweep_scaling.py --rounds 5 --no-ray
    python benchmarks/sweep_scaling.py --steps 300 --trials 8 --rounds 1   # a quick look
    python benchmarks/sweep_scaling.py --rounds 0 --ray-idle-seconds 20    # Ray's idle CPU only

Targets on a 2-core machine: 2 workers >= 1.9x the trials per hour of 1 worker; Ray's wall
time <= 1.05x the local pool's at the same worker count.

Why rounds: a shared VM's speed drifts by tens of percent within minutes, so one x1 sweep
followed by one x2 sweep puts that drift into the ratio. Each round runs every kind of sweep
once, in an order rotated from round to round (every kind takes every position), and the
ratios are taken within a round, between sweeps minutes apart; the verdict is the median
over rounds.

Wall time is the whole run_sweep call. Ray's cluster start is measured apart, since one
cluster serves many sweeps; it stays up through all rounds, so its idle processes are there
for the local sweeps too. Local workers are persistent too (they import torch once and serve
sweep after sweep, like Ray's), so by default only the first local x2 sweep pays their
start-up; --cold ends them before every local sweep, so each pays it as a fresh
`wdlab sweep` command does. "busy" is the sum of
the trials' own training seconds over (workers x wall): what is left to 100% is each trial's
evaluation, set-up and saving (the same work at any worker count), and the sweep's own
costs: worker start-up, the last trial running alone, dispatching. Every sweep writes to a
fresh store.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from wdlab.store import Store
from wdlab.sweep import SweepSpec, run_sweep, shutdown_workers

KINDS = {"local x1": ("local", 1), "local x2": ("local", 2), "ray x2": ("ray", 2)}


def _spec(steps: int, trials: int, threads: int | None) -> SweepSpec:
    n = max(trials // 2, 1)  # x 2 seeds; log-spaced in AdamW's safe range: none diverges early
    lrs = [3e-4 * (1e-2 / 3e-4) ** (i / max(n - 1, 1)) for i in range(n)]
    fixed = [f"steps={steps}", "train.stop_at_target=false", 'train.monitor="off"']
    if threads is not None:
        fixed.append(f"train.threads={threads}")
    return SweepSpec.create(
        workload="teacher",
        axes={"optimizer.lr": lrs},
        seeds=2 if trials > 1 else 1,
        assignments=fixed,
    )


def _train_seconds(store_path: Path, run_ids: list[str]) -> float:
    with Store(store_path) as store:
        return sum((store.get_run(r).result or {}).get("train_seconds", 0.0) for r in run_ids)


def _cpu_seconds_of(marker: str) -> dict[int, float]:
    """CPU seconds so far of every other process whose command line contains `marker`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        found[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def _idle_ray_cpu(seconds: float) -> float:
    """Share of one core the idle Ray cluster's own processes use (Linux /proc)."""
    before = _cpu_seconds_of("ray")
    time.sleep(seconds)
    after = _cpu_seconds_of("ray")
    return sum(t - before[pid] for pid, t in after.items() if pid in before) / seconds


def _timed(spec: SweepSpec, store_path: Path, label: str, cold: bool) -> dict[str, float]:
    backend, workers = KINDS[label]
    if cold and backend == "local":
        shutdown_workers()  # this sweep starts its workers (spawn + torch import) as a command does
    start = time.perf_counter()
    summary = run_sweep(spec, store_path, workers=workers, backend=backend, progress=False)
    wall = time.perf_counter() - start
    ended = summary.counts["finished"] + summary.counts["diverged"]
    if ended != len(summary.trials):
        errors = {t.error for t in summary.trials if t.error}
        raise SystemExit(f"{label}: not every trial ended well: {summary.counts} {errors}")
    busy = _train_seconds(store_path, [t.run_id for t in summary.trials if t.run_id])
    row = {
        "wall": wall,
        "per_hour": len(summary.trials) / wall * 3600,
        "trial_seconds": busy / len(summary.trials),
        "busy": busy / (workers * wall),
    }
    print(
        f"  {label:<9} {len(summary.trials)} trials  {wall:7.2f} s  {row['per_hour']:7.0f} "
        f"trials/h  trial {row['trial_seconds']:.2f} s  busy {100 * row['busy']:3.0f}%",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="steps per trial")
    parser.add_argument("--trials", type=int, default=32, help="trials per sweep")
    parser.add_argument("--rounds", type=int, default=3, help="repeats of every sweep kind")
    parser.add_argument(
        "--threads",
        type=int,
        help="pin every trial's torch threads (default: wdlab's fixed TRIAL_THREADS, 1)",
    )
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument(
        "--cold", action="store_true", help="start the local workers afresh for every sweep"
    )
    parser.add_argument("--ray-idle-seconds", type=float, default=10.0,
                        help="first measure the idle Ray cluster's CPU use this long (0: skip)")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args(argv)
    spec = _spec(args.steps, args.trials, args.threads)
    kinds = ["local x1", "local x2"]
    ray = None
    if not args.no_ray:
        try:
            import ray
        except ImportError:
            print("ray is not installed (pip install wdlab[ray]); measuring the local pool only")
        else:
            start = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            print(f"ray.init(num_cpus=2): {time.perf_counter() - start:.1f} s (apart)")
            if args.ray_idle_seconds > 0 and os.path.isdir("/proc"):
                time.sleep(5)  # let start-up settle
                share = _idle_ray_cpu(args.ray_idle_seconds)
                print(f"idle Ray processes: {100 * share:.1f}% of one core "
                      f"(over {args.ray_idle_seconds:g} s)")
            kinds.append("ray x2")
    rounds: list[dict[str, dict[str, float]]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                order = kinds[r % len(kinds):] + kinds[: r % len(kinds)]
                print(f"round {r + 1}/{args.rounds}: {', '.join(order)}", flush=True)
                rounds.append({
                    label: _timed(
                        spec, Path(tmp) / f"r{r}-{label.replace(' ', '')}.db", label, args.cold
                    )
                    for label in order
                })
    finally:
        if ray is not None:
            ray.shutdown()
    if not rounds:
        return {}
    scaling = [row["local x1"]["wall"] / row["local x2"]["wall"] for row in rounds]
    print(f"\n2 workers vs 1, trials per hour, per round: "
          f"{', '.join(f'{x:.2f}x' for x in scaling)}; "
          f"median {statistics.median(scaling):.2f}x (target >= 1.9x)")
    out: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds,
                           "scaling": scaling}
    if "ray x2" in kinds:
        ray_cost = [row["ray x2"]["wall"] / row["local x2"]["wall"] for row in rounds]
        print(f"Ray vs local pool (2 workers), wall time, per round: "
              f"{', '.join(f'{x:.2f}x' for x in ray_cost)}; "
              f"median {statistics.median(ray_cost):.2f}x (target <= 1.05x)")
        out["ray_cost"] = ray_cost
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
