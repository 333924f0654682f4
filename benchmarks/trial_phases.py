"""Where a sweep trial's wall time goes: training steps, evaluation, checkpoints, the store.

    python benchmarks/trial_phases.py                       # teacher 4 x 3000, charlm 2 x 200
    python benchmarks/trial_phases.py --quick               # teacher 2 x 300, charlm 1 x 20
    python benchmarks/trial_phases.py --workloads teacher --trials 8 --steps 3000

The sweep (the same as benchmarks/sweep_scaling.py's: fixed recipe, no stop at the target)
runs with one worker, in this process, with timers wrapped around the functions a trial
calls between its training steps; each phase's time is exclusive (a store commit inside a
checkpoint counts as the commit, not twice). Wall and CPU time (this thread's) are both
shown: on a loaded machine wall time includes waiting for a core, CPU time does not, and a
phase whose wall time far exceeds its CPU time is waiting on the disk (fsync).

"training steps" is the trials' own `train_seconds` (forward, backward, optimizer step:
what the AlgoPerf-style timer counts); "loop and rest" is what is left of the sweep's wall
time (per-step bookkeeping, claims, Python). Imports of torch and wdlab's training code are
done before the timer starts and shown apart: a worker pays them once, not per trial.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_scaling import WORKLOADS, _spec  # noqa: E402 - the same sweeps

QUICK = {"teacher": (2, 300), "charlm": (1, 20)}
FULL = {"teacher": (4, 3000), "charlm": (2, 200)}


class Phases:
    """Exclusive wall and CPU seconds per phase (a stack, so nested phases are not counted
    twice) and call counts."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[list[float]] = []  # [child wall, child cpu] of each open phase

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.stack.append([0.0, 0.0])
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
                child_wall, child_cpu = self.stack.pop()
                self.wall[name] += wall - child_wall
                self.cpu[name] += cpu - child_cpu
                self.calls[name] += 1
                if self.stack:
                    self.stack[-1][0] += wall
                    self.stack[-1][1] += cpu

        return timed


def instrument(phases: Phases) -> None:
    """Wrap the functions a trial calls between steps (in this process only)."""
    from wdlab import checkpoint as checkpoint_io
    from wdlab import evaluation, parallel, train, workloads
    from wdlab.store import Store

    def patch(owner: Any, attr: str, name: str) -> None:
        setattr(owner, attr, phases.wrap(name, getattr(owner, attr)))

    real_from_config = workloads.from_config

    def from_config(config: Any) -> Any:
        workload = real_from_config(config)
        workload.build_model = phases.wrap("set-up: model", workload.build_model)
        return workload

    workloads.from_config = phases.wrap("set-up: data", from_config)
    patch(train, "create_optimizer", "set-up: optimizer")
    patch(evaluation.Evaluator, "__call__", "evaluation")
    patch(checkpoint_io, "first_nonfinite", "checkpoint: finite check")
    patch(parallel, "save_checkpoint", "checkpoint: torch.save + fsync")
    patch(Store, "log_metrics", "store: metric rows (buffer)")
    patch(Store, "flush", "store: metric commits")
    for attr in ("create_run", "claim_run", "heartbeat_run", "update_run", "truncate_metrics",
                 "get_run", "claim_trial", "heartbeat_trial", "finish_trial", "list_runs",
                 "trials"):
        patch(Store, attr, "store: run and trial records")


def measure(workload: str, trials: int, steps: int, assignments: list[str]) -> None:
    from wdlab.store import Store
    from wdlab.sweep import run_sweep

    phases = Phases()
    instrument(phases)
    spec = _spec(workload, steps, trials, None)
    if assignments:
        spec = spec.model_copy(update={"assignments": [*spec.assignments, *assignments]})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wdlab.db"
        wall, cpu = time.perf_counter(), time.thread_time()
        summary = run_sweep(spec, path, workers=1, progress=False)
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        with Store(path) as store:
            runs = [store.get_run(t.run_id) for t in summary.trials]
    training = sum((r.result or {}).get("train_seconds", 0.0) for r in runs)
    n = len(runs)
    print(f"\n{workload}: {n} trials x {steps} steps, one worker: {wall:.2f} s wall, "
          f"{cpu:.2f} s CPU; per trial {wall / n:.3f} s")
    print(f"  {'phase':<34} {'calls/trial':>11} {'wall/trial':>11} {'share':>6} "
          f"{'CPU/trial':>10}")
    rows = [("training steps", steps, training, None)]
    rows += [(name, phases.calls[name] / n, phases.wall[name], phases.cpu[name])
             for name in sorted(phases.wall, key=lambda k: -phases.wall[k])]
    accounted = training + sum(phases.wall.values())
    rows.append(("loop and rest", 0, wall - accounted, None))
    for name, calls, seconds, cpu_s in rows:
        cpu_text = f"{cpu_s / n:9.3f}s" if cpu_s is not None else f"{'':>10}"
        print(f"  {name:<34} {calls:11.0f} {seconds / n:10.3f}s {100 * seconds / wall:5.1f}% "
              f"{cpu_text}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sweeps: checks it runs")
    parser.add_argument("--workloads", default="teacher,charlm", help="comma list")
    parser.add_argument("--trials", type=int, help="trials per sweep (default per workload)")
    parser.add_argument("--steps", type=int, help="steps per trial (default per workload)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra setting of every trial, e.g. train.checkpoint_every=50 "
                        "(the sweeps' checkpoint cadence before issue 14)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    import torch  # noqa: F401 - what a worker imports once

    import wdlab.train  # noqa: F401

    print(f"imports (torch, wdlab.train; once per worker process): "
          f"{time.perf_counter() - start:.2f} s")
    for name in [w.strip() for w in args.workloads.split(",") if w.strip()]:
        if name not in WORKLOADS:
            parser.error(f"--workloads: {name!r} is not one of {', '.join(WORKLOADS)}")
        trials, steps = (QUICK if args.quick else FULL)[name]
        measure(name, args.trials or trials, args.steps or steps, args.set)


if __name__ == "__main__":
    main()
