"""Monitor overhead: the engine with --monitor light / full against --monitor off.

Runs alternate between the settings so machine noise hits all alike; each run's training
time per step comes from the engine's own clock (evaluation excluded). Prints the medians
and the ratios (target: light <= 1.03x off at the default cadence).

    python benchmarks/monitor_overhead.py --workload charlm --steps 100 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from wdlab import train
from wdlab.config import build_config
from wdlab.store import Store


def seconds_per_step(workload: str, steps: int, monitor: str, root: Path) -> float:
    config = build_config(
        workload,
        flags={"steps": steps},
        assignments=[f"train.monitor={monitor}", "train.stop_at_target=false",
                     f"train.eval_every={10 * steps}"],
    )
    with Store(root / "bench.db") as store:
        result = train.run(config, store, root / "runs")
    return result.train_seconds / result.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="charlm")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    levels = ("off", "light", "full")
    times: dict[str, list[float]] = {level: [] for level in levels}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for level in levels:
                times[level].append(seconds_per_step(args.workload, args.steps, level, Path(tmp)))
    medians = {level: statistics.median(values) for level, values in times.items()}
    every = build_config(args.workload).train.monitor_every
    print(f"workload {args.workload}, {args.steps} steps x {args.repeats} repeats, "
          f"{args.threads} threads, monitor every {every} steps, torch {torch.__version__}")
    for level in levels:
        ratio = medians[level] / medians["off"]
        print(f"monitor {level:<5} {1e3 * medians[level]:8.2f} ms/step  ratio {ratio:.3f}")
    print("target: light <= 1.03")


if __name__ == "__main__":
    main()
