"""LR sensitivity of the charlm GPT across norm placements, qk-norm + z-loss and σReparam.

Reproduces the measurement of Wortsman et al. ("Small-scale proxies for large-scale
Transformer training instabilities"; REFERENCE §5) on wdlab's charlm: for each variant, sweep
the learning rate over [3e-4, 3e-1] and report
    S = mean over η of (min(ℓ(η), ℓ0) − ℓ*),
ℓ0 the validation loss at initialization, ℓ* the best loss of the variant's sweep; a diverged
run counts as ℓ0. Their setup: AdamW β (0.9, 0.95), eps 1e-8, clip 1, 5% warm-up then
cosine, no biases, independent weight decay (1e-4 here).

Every variant is a `wdlab sweep` in one store, so an interrupted run resumes where it
stopped (finished trials are not re-run):

    python benchmarks/lr_sensitivity.py --store lrsens.db --workers 2 \
        --json docs/img/lr_sensitivity.json --plot docs/img/lr_sensitivity.png
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch

from wdlab import workloads
from wdlab.config import build_config
from wdlab.report import plot_lr_sensitivity
from wdlab.scoring import lr_sensitivity
from wdlab.sweep import SweepSpec, run_sweep

VARIANTS: dict[str, list[str]] = {
    "pre-LN": [],
    "pre-LN + qk-norm + z-loss": ["model.qk_norm=true", "model.z_loss=1e-4"],
    "peri-LN": ['model.placement="peri"'],
    "mix-LN": ['model.placement="mix"'],
    "σReparam": ["model.sigma_reparam=true"],
}
"""Variant name -> the settings it adds to the charlm recipe (pre-LN GPT)."""

LR_RANGE = (3e-4, 3e-1)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=Path("lr_sensitivity.db"))
    p.add_argument("--lrs", type=_floats,
                   default=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=750)
    p.add_argument("--wd", type=float, default=1e-4, help="independent weight decay")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated subset of: " + ", ".join(VARIANTS))
    p.add_argument("--set", dest="assignments", action="append", default=[],
                   help="extra settings for every run, e.g. --set model.n_layer=2")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    return p.parse_args(argv)


def common_settings(args: argparse.Namespace) -> list[str]:
    """Wortsman et al.'s recipe on top of the charlm recipe (which already has no biases)."""
    warmup = max(1, round(0.05 * args.steps))
    return [
        f"steps={args.steps}",
        f"optimizer.weight_decay={args.wd}",
        'optimizer.decay="independent"',
        "optimizer.betas=[0.9, 0.95]",
        "optimizer.eps=1e-8",
        "train.clip=1.0",
        'schedule.kind="cosine"',
        f"schedule.warmup={warmup}",
        "train.stop_at_target=false",
        'train.on_nonfinite="stop"',
        'train.monitor="off"',
        "train.threads=1",
        *args.assignments,
    ]


def init_loss(settings: list[str], seed: int) -> float:
    """Validation loss of the untrained model: ℓ0 of the sensitivity score."""
    config = build_config("charlm", flags={"seed": seed}, assignments=settings)
    workload = workloads.from_config(config)
    torch.manual_seed(seed)
    model = workload.build_model()
    return float(workload.evaluate(model)["val_loss"])


def _capped(loss: float | None, l0: float) -> float:
    return l0 if loss is None or not math.isfinite(loss) else min(loss, l0)


def measure(args: argparse.Namespace, name: str) -> dict[str, Any]:
    settings = [*common_settings(args), *VARIANTS[name]]
    spec = SweepSpec.create(
        workload="charlm",
        axes={"optimizer.lr": args.lrs},
        seeds=args.seeds,
        assignments=settings,
        name=f"lrsens {name}",
    )
    summary = run_sweep(spec, args.store, workers=args.workers)
    seeds = sorted({t.params["seed"] for t in summary.trials})
    l0 = statistics.fmean(init_loss(settings, s) for s in seeds)
    by_lr: dict[float, dict[int, float | None]] = {lr: {} for lr in args.lrs}
    for t in summary.trials:
        ok = t.status == "finished"
        by_lr[t.params["optimizer.lr"]][t.params["seed"]] = t.final if ok else None
    lrs = sorted(by_lr)
    mean_loss = [statistics.fmean(_capped(by_lr[lr].get(s), l0) for s in seeds) for lr in lrs]
    per_seed = [
        lr_sensitivity(lrs, [_capped(by_lr[lr].get(s), l0) for lr in lrs], l0, LR_RANGE)
        for s in seeds
    ]
    return {
        "variant": name,
        "init_loss": l0,
        "lrs": lrs,
        "losses": {str(lr): [by_lr[lr].get(s) for s in seeds] for lr in lrs},
        "mean_capped_loss": mean_loss,
        "best_loss": min(mean_loss),
        "best_lr": lrs[mean_loss.index(min(mean_loss))],
        "sensitivity": lr_sensitivity(lrs, mean_loss, l0, LR_RANGE),
        "sensitivity_per_seed": per_seed,
        "diverged": sum(1 for t in summary.trials if t.status == "diverged"),
        "sweep": summary.sweep_id,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    results = []
    for name in names:
        print(f"== {name}", flush=True)
        results.append(measure(args, name))
    print("\n| variant | S (mean of seeds' losses) | S per seed | best loss | best lr | diverged |")
    print("|---|---|---|---|---|---|")
    for r in results:
        seeds = " / ".join(f"{s:.3f}" for s in r["sensitivity_per_seed"])
        print(f"| {r['variant']} | {r['sensitivity']:.3f} | {seeds} | {r['best_loss']:.3f} "
              f"| {r['best_lr']:g} | {r['diverged']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        lines = [(r["variant"], r["lrs"], r["mean_capped_loss"]) for r in results]
        l0 = statistics.fmean(r["init_loss"] for r in results)
        plot_lr_sensitivity(lines, l0, args.plot,
                            f"charlm, {args.steps} steps, mean of {args.seeds} seeds")
    return results


if __name__ == "__main__":
    main()
