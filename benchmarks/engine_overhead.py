"""Engine overhead: wdlab's training loop (with store writes, no monitor) against a bare loop.

Both train the same workload, model and optimizer for the same steps with evaluation out of
the way; blocks of steps alternate between the two so machine noise hits both alike.
Prints ms/step for each and the ratio (target: engine <= 1.05x the bare loop).

    python benchmarks/engine_overhead.py --workload charlm --steps 60 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from wdlab import train, workloads
from wdlab.config import build_config
from wdlab.factory import create_optimizer
from wdlab.store import Store


def bare_loop(config, steps: int) -> float:
    """The hand-written loop: same model, groups, optimizer and schedule; seconds per step."""
    workload = workloads.from_config(config)
    torch.manual_seed(config.seed)
    model = workload.build_model()
    opt = create_optimizer(
        model, config.optimizer.name, lr=config.optimizer.lr,
        example_input=workload.example_input(), **config.optimizer.hyperparameters(),
    )
    start = time.perf_counter()
    for step in range(steps):
        scale = train.lr_multiplier(step, steps, config.schedule.kind, config.schedule.warmup)
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * scale
        loss = workload.loss(model, workload.batch(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def engine(config, steps: int, root: Path) -> float:
    """wdlab.train.run with store writes every step; training seconds per step (evaluation
    is excluded by the engine's own AlgoPerf timer)."""
    with Store(root / "bench.db") as store:
        result = train.run(config, store, root / "runs")
    return result.train_seconds / result.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="charlm")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = build_config(
        args.workload,
        flags={"steps": args.steps},
        assignments=["train.monitor=off", "train.stop_at_target=false",
                     f"train.eval_every={10 * args.steps}", "target=nan"],
    )
    ours, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            bare.append(bare_loop(config, args.steps))
            ours.append(engine(config, args.steps, Path(tmp)))
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"workload {args.workload}, {args.steps} steps x {args.repeats} repeats, "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"bare loop  {1e3 * b:8.2f} ms/step (median)")
    print(f"engine     {1e3 * o:8.2f} ms/step (median)")
    print(f"ratio engine/bare = {o / b:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
