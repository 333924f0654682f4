"""Live-logger overhead: the engine with --log tensorboard / mlflow / wandb against none.

Runs alternate between the settings so machine noise hits all alike; each run's training
time per step comes from the engine's own clock (evaluation excluded; opening a logger
happens at the first logged row, inside the clock, so short runs overstate it). W&B runs
offline, MLflow on a file store (MLFLOW_ALLOW_FILE_STORE=true) in a temporary folder.

    python benchmarks/sinks_overhead.py --workload charlm --steps 200 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import torch

from wdlab import train
from wdlab.config import build_config
from wdlab.store import Store

SETTINGS = ("none", "tensorboard", "mlflow", "wandb")


def seconds_per_step(workload: str, steps: int, sink: str, monitor: str, root: Path) -> float:
    assignments = [f"train.monitor={monitor}", "train.stop_at_target=false",
                   f"train.eval_every={10 * steps}"]
    if sink != "none":
        assignments += [f"log.sinks={sink}", f"log.mlflow_uri='file:{root / 'mlruns'}'"]
    config = build_config(workload, flags={"steps": steps}, assignments=assignments)
    with Store(root / "bench.db") as store:
        result = train.run(config, store, root / "runs")
    return result.train_seconds / result.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="charlm")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--monitor", default="light", choices=["off", "light", "summary"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    times: dict[str, list[float]] = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for sink in SETTINGS:
                times[sink].append(seconds_per_step(args.workload, args.steps, sink,
                                                    args.monitor, Path(tmp)))
    medians = {s: statistics.median(v) for s, v in times.items()}
    print(f"workload {args.workload}, {args.steps} steps x {args.repeats} repeats, "
          f"{args.threads} threads, monitor {args.monitor}, torch {torch.__version__}")
    for sink in SETTINGS:
        ratio = medians[sink] / medians["none"]
        print(f"--log {sink:<12} {1e3 * medians[sink]:8.2f} ms/step  ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
