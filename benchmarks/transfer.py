"""Measured hyperparameter transfer across width: regret of each wdlab.scaling rule.

1. Tune lr x wd on a grid at the base width (rule sp; every rule but fan equals sp there).
2. Carry the best (lr, wd) to each larger width with each rule.
3. At each width also sweep the grid in the standard (sp) and the μP (mup-wd) parametrization;
   the best loss of every run at that width is the reference.
4. Regret = loss of the carried setting - best loss at that width (also relative to it).

Every run goes through the engine (wdlab.train.run), exactly as `wdlab run WORKLOAD --set
optimizer.scaling=RULE --set optimizer.base_width=W0` would, with an in-memory store.
Runs with identical per-role settings (e.g. timescale and mup-wd when only width changes)
are run once. Full experiment (hours on one core):

    python benchmarks/transfer.py --widths 64,128,256,512 --steps 750 --seeds 0,1,2

The reduced run of docs/scaling.md:

    python benchmarks/transfer.py --widths 32,64,128 --steps 300 --lrs 3e-3,1e-2,3e-2 \
        --wds 0.01,0.3 --set model.n_layer=2 --json transfer_reduced.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from wdlab.config import build_config
from wdlab.coordcheck import WIDTH_FIELDS
from wdlab.scaling import RULES, transfer_table
from wdlab.store import Store
from wdlab.train import run


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="charlm")
    p.add_argument("--widths", type=_ints, default=[64, 128, 256, 512],
                   help="comma-separated; the first is the base width")
    p.add_argument("--steps", type=int, default=750)
    p.add_argument("--lrs", type=_floats, default=[1e-3, 3e-3, 1e-2])
    p.add_argument("--wds", type=_floats, default=[0.03, 0.1, 0.3])
    p.add_argument("--seeds", type=_ints, default=[0])
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--sweep-rules", default="sp,mup-wd",
                   help="parametrizations swept at every width to find the best loss")
    p.add_argument("--set", dest="assignments", action="append", default=[],
                   help="extra run settings, e.g. --set model.n_layer=2 (repeatable)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    return p.parse_args(argv)


class Runner:
    """Runs (width, rule, lr, wd) through the engine, averaged over seeds, with a cache keyed
    by the per-role settings the rule produces."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args, self.root = args, root
        self.base = args.widths[0]
        self.cache: dict[tuple[Any, ...], float] = {}
        self.log: list[dict[str, Any]] = []
        self.store = Store(":memory:")

    def key(self, width: int, rule: str, lr: float, wd: float) -> tuple[Any, ...]:
        rows = transfer_table(rule, self.base, width, lr, wd)
        values = tuple(
            (r["role"], r["lr"], r["weight_decay"], r["init_std_mult"], r["forward_mult"])
            for r in rows
        )
        return (width, rule != "sp" and width != self.base, values)

    def loss(self, width: int, rule: str, lr: float, wd: float) -> float:
        key = self.key(width, rule, lr, wd)
        if key in self.cache:
            return self.cache[key]
        a = self.args
        losses = []
        start = time.perf_counter()
        for seed in a.seeds:
            sets = [
                *a.assignments,
                f"model.{WIDTH_FIELDS[a.workload]}={width}",
                f"optimizer.scaling=\"{rule}\"",
                f"optimizer.base_width={self.base}",
                "train.monitor=\"off\"",
                "train.stop_at_target=false",
                f"train.eval_every={a.steps}",
                f"train.threads={a.threads}",
            ]
            config = build_config(
                a.workload,
                flags={"steps": a.steps, "seed": seed, "optimizer.lr": lr,
                       "optimizer.weight_decay": wd},
                assignments=sets,
            )
            result = run(config, self.store, self.root)
            value = result.final_metrics.get("val_loss", float("nan"))
            losses.append(value if result.status == "finished" else float("inf"))
        loss = sum(losses) / len(losses)
        self.cache[key] = loss
        entry = {"width": width, "rule": rule, "lr": lr, "wd": wd, "loss": loss,
                 "seconds": round(time.perf_counter() - start, 1)}
        self.log.append(entry)
        print(f"  width {width:4d} {rule:9s} lr {lr:<8.3g} wd {wd:<6.3g} -> {loss:.4f} "
              f"({entry['seconds']} s)", flush=True)
        return loss


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rules = [r for r in args.rules.split(",") if r]
    sweep_rules = [r for r in args.sweep_rules.split(",") if r]
    grid = [(lr, wd) for lr in args.lrs for wd in args.wds]
    with tempfile.TemporaryDirectory() as tmp:
        runner = Runner(args, Path(tmp))
        base = args.widths[0]
        print(f"tuning at base width {base}: {len(grid)} settings")
        base_losses = {(lr, wd): runner.loss(base, "sp", lr, wd) for lr, wd in grid}
        best_lr, best_wd = min(base_losses, key=base_losses.get)
        print(f"best at base width: lr {best_lr:g} wd {best_wd:g} "
              f"loss {base_losses[best_lr, best_wd]:.4f}")
        table: dict[int, dict[str, Any]] = {}
        for width in args.widths[1:]:
            print(f"width {width}")
            carried = {rule: runner.loss(width, rule, best_lr, best_wd) for rule in rules}
            swept = {
                f"{rule}:{lr:g}:{wd:g}": runner.loss(width, rule, lr, wd)
                for rule in sweep_rules for lr, wd in grid
            }
            best = min([*carried.values(), *swept.values()])
            best_at = min(swept, key=swept.get)
            table[width] = {
                "best_loss": best,
                "best_sweep_setting": best_at,
                "carried_loss": carried,
                "regret": {r: carried[r] - best for r in rules},
                "relative_regret": {r: (carried[r] - best) / best for r in rules},
            }
        runner.store.close()
    print("\nregret = loss(carried) - best loss at that width (relative to best in brackets)")
    print("width  best    " + "  ".join(f"{r:>16s}" for r in rules))
    for width, row in table.items():
        cells = "  ".join(
            f"{row['regret'][r]:+.4f} ({100 * row['relative_regret'][r]:4.1f}%)" for r in rules
        )
        print(f"{width:5d}  {row['best_loss']:.4f}  {cells}")
    out = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "base": {"lr": best_lr, "wd": best_wd,
                 "losses": {f"{k[0]:g}:{k[1]:g}": v for k, v in base_losses.items()}},
        "widths": {str(k): v for k, v in table.items()},
        "runs": runner.log,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
