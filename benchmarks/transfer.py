"""Measured hyperparameter transfer across width: regret of each wdlab.scaling rule.

1. Tune lr x wd on a grid at the base width (rule sp; every rule but fan equals sp there).
2. Carry the best (lr, wd) to each larger width with each rule.
3. At each width also sweep the grid in the standard (sp) and the μP (mup-wd) parametrization;
   the best loss of every run at that width is the reference.
4. Regret = loss of the carried setting - best loss at that width (also relative to it).

Every run is a trial of a `wdlab sweep` (wdlab.sweep.run_sweep) in one store, exactly as
`wdlab run WORKLOAD --set optimizer.scaling=RULE --set optimizer.base_width=W0` would run it,
so --workers uses every core and an interrupted experiment resumes where it stopped.
Losses are means over seeds; a diverged or failed run counts as +inf.

    python benchmarks/transfer.py --widths 64,128,256,512 --steps 750 --seeds 0,1,2 \
        --store transfer.db --json transfer.json

The run of docs/scaling.md (2 layers, 300 steps; the lr axis at 512 follows the optimum):

    python benchmarks/transfer.py --widths 64,128,256,512 --steps 300 \
        --lrs 1e-3,2e-3,4e-3,8e-3,1.6e-2 --lrs-at 512=5e-4,1e-3,2e-3,4e-3 --wds 0.1,1.0 \
        --set model.n_layer=2 --set model.tie_embeddings=false \
        --rules sp,mup,mup-wd,fan,sp-lr,sp-lr-all --sweep-rules sp \
        --store transfer512.db --json transfer512.json --plot transfer.png

Carried runs of earlier invocations on the same store are reused, so adding a rule to
--rules runs only that rule's carried settings.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from wdlab.coordcheck import WIDTH_FIELDS
from wdlab.scaling import RULES
from wdlab.store import Store
from wdlab.sweep import SweepSpec, SweepSummary, run_sweep, summarize


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _text(values: list[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


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
    p.add_argument("--lrs-at", dest="lrs_at", action="append", default=[], metavar="W=LRS",
                   help="the swept lrs at width W instead of --lrs, e.g. 512=5e-4,1e-3,2e-3 "
                        "(repeatable; the grid follows the optimum as it moves with width)")
    p.add_argument("--seeds", type=_ints, default=[0])
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--sweep-rules", default="sp,mup-wd",
                   help="parametrizations swept at every width to find the best loss")
    p.add_argument("--set", dest="assignments", action="append", default=[],
                   help="extra run settings, e.g. --set model.n_layer=2 (repeatable)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--store", type=Path, default=Path("transfer.db"))
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--plot", type=Path, default=None,
                   help="PNG: the swept loss against lr at each width, carried runs marked")
    args = p.parse_args(argv)
    try:
        args.lrs_at = {int(w): _floats(lrs) for w, lrs in (a.split("=", 1) for a in args.lrs_at)}
    except ValueError:
        p.error("--lrs-at takes WIDTH=LR,LR,... e.g. --lrs-at 512=5e-4,1e-3,2e-3")
    return args


def _sweep(args: argparse.Namespace, width: int, axes: dict[str, list[Any]],
           name: str) -> SweepSummary:
    fixed = [
        *args.assignments,
        f"steps={args.steps}",
        f"model.{WIDTH_FIELDS[args.workload]}={width}",
        f"optimizer.base_width={args.widths[0]}",
        'train.monitor="off"',
        "train.stop_at_target=false",
        f"train.eval_every={args.steps}",
        "train.threads=1",
    ]
    spec = SweepSpec.create(workload=args.workload, axes=axes, seeds=args.seeds,
                            assignments=fixed, name=name)
    print(f"== {name}: {len(spec.trials())} trials", flush=True)
    return run_sweep(spec, args.store, workers=args.workers)


def _mean_losses(summary: SweepSummary) -> dict[tuple[str, float, float], float]:
    """(rule, lr, wd) -> val loss averaged over seeds; not finished -> inf."""
    seeds: dict[tuple[str, float, float], list[float]] = {}
    for t in summary.trials:
        key = (t.params["optimizer.scaling"], t.params["optimizer.lr"],
               t.params["optimizer.weight_decay"])
        ok = t.status == "finished" and t.final is not None and math.isfinite(t.final)
        seeds.setdefault(key, []).append(t.final if ok else math.inf)
    return {k: statistics.fmean(v) if all(map(math.isfinite, v)) else math.inf
            for k, v in seeds.items()}


def _carried_before(store_path: Path, width: int) -> dict[tuple[str, float, float], float]:
    """Carried runs of earlier invocations on this store (a rule added later runs alone).
    Sweep names are unique per store, so one store holds one experiment's sweeps."""
    if not store_path.exists():
        return {}
    found: dict[tuple[str, float, float], float] = {}
    with Store(store_path) as store:
        for record in store.list_sweeps():
            if record.name.startswith(f"transfer carried {width} ") and (
                record.status == "finished"
            ):
                found.update(_mean_losses(summarize(store, record.id)))
    return found


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    rules = [r for r in args.rules.split(",") if r]
    sweep_rules = [r for r in args.sweep_rules.split(",") if r]
    base = args.widths[0]
    grid_axes = {"optimizer.lr": args.lrs, "optimizer.weight_decay": args.wds}
    base_losses = _mean_losses(_sweep(args, base, {"optimizer.scaling": ["sp"], **grid_axes},
                                      f"transfer base {base}"))
    _, best_lr, best_wd = min(base_losses, key=base_losses.get)  # type: ignore[arg-type]
    print(f"best at base width {base}: lr {best_lr:g} wd {best_wd:g} "
          f"loss {base_losses['sp', best_lr, best_wd]:.4f}", flush=True)
    table: dict[int, dict[str, Any]] = {}
    for width in args.widths[1:]:
        lrs = args.lrs_at.get(width, args.lrs)
        name = f"transfer grid {width}" + ("" if lrs == args.lrs else f" lrs {_text(lrs)}")
        axes = {**grid_axes, "optimizer.lr": lrs}
        swept = _mean_losses(_sweep(args, width, {"optimizer.scaling": sweep_rules, **axes},
                                    name))
        losses = {**swept, **_carried_before(args.store, width)}
        missing = [r for r in rules if (r, best_lr, best_wd) not in losses]
        if missing:
            losses.update(_mean_losses(_sweep(
                args, width, {"optimizer.scaling": missing, "optimizer.lr": [best_lr],
                              "optimizer.weight_decay": [best_wd]},
                f"transfer carried {width} {','.join(missing)}",
            )))
        carried = {r: losses[r, best_lr, best_wd] for r in rules}
        best_key = min(losses, key=losses.get)  # type: ignore[arg-type]
        best = losses[best_key]
        table[width] = {
            "best_loss": best,
            "best_setting": f"{best_key[0]}:{best_key[1]:g}:{best_key[2]:g}",
            "best_by_rule": {r: min(v for (rr, _, _), v in swept.items() if rr == r)
                             for r in sweep_rules},
            "carried_loss": carried,
            "regret": {r: carried[r] - best for r in rules},
            "relative_regret": {r: (carried[r] - best) / best for r in rules},
            "grid": {f"{r}:{lr:g}:{wd:g}": v for (r, lr, wd), v in swept.items()},
        }
    print("\nregret = loss(carried) - best loss at that width (relative to best in brackets)")
    print("width  best    " + "  ".join(f"{r:>16s}" for r in rules))
    for width, row in table.items():
        cells = "  ".join(
            f"{row['regret'][r]:+.4f} ({100 * row['relative_regret'][r]:4.1f}%)" for r in rules
        )
        print(f"{width:5d}  {row['best_loss']:.4f}  {cells}  best: {row['best_setting']}")
    out = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "base": {"lr": best_lr, "wd": best_wd,
                 "losses": {f"{lr:g}:{wd:g}": v for (_, lr, wd), v in base_losses.items()}},
        "widths": {str(k): v for k, v in table.items()},
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    if args.plot:
        plot(out, args.plot)
    return out


def plot(out: dict[str, Any], path: Path) -> None:
    """Loss against the lr of hidden matrices, one line per width (the swept grid at the
    base's best wd), with each rule's carried run marked where its matrices' lr lands."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from wdlab.scaling import role_scales

    base = out["args"]["widths"][0]
    best_lr, best_wd = out["base"]["lr"], out["base"]["wd"]
    fig = Figure(figsize=(9, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    markers = dict(zip(out["args"]["rules"].split(","), "os^vDPX*", strict=False))
    widths = {base: {"grid": {f"sp:{k}": v for k, v in out["base"]["losses"].items()},
                     "carried_loss": {}}, **{int(w): r for w, r in out["widths"].items()}}
    for i, (width, row) in enumerate(widths.items()):
        color = f"C{i}"
        points = sorted((float(lr), v) for key, v in row["grid"].items()
                        for rule, lr, wd in [key.split(":")]
                        if rule == "sp" and float(wd) == best_wd and math.isfinite(v))
        ax.plot(*zip(*points, strict=True), color=color,
                label=f"width {width} (SP grid, wd {best_wd:g})")
        for rule, loss in row["carried_loss"].items():
            if rule in markers and math.isfinite(loss):
                lr = best_lr * role_scales(rule, width / base)["matrix"].lr_mult
                ax.plot([lr], [loss], markers[rule], color=color, markerfacecolor="none",
                        markersize=8)
    for rule, marker in markers.items():
        ax.plot([], [], marker, color="0.3", markerfacecolor="none", label=f"carried: {rule}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate of hidden matrices")
    ax.set_ylabel("val loss")
    ax.set_title(f"transfer from width {base} (lr {best_lr:g}, wd {best_wd:g})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
