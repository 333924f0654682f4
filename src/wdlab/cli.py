"""The `wdlab` command line: run | sweep | bench | report | runs | show | export | inspect |
transfer | coordcheck.

Every error a user can cause ends in one line on stderr naming the problem and the fix, with
exit code 2 and no traceback. Options use one style everywhere (DESIGN.md).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from wdlab import __version__
from wdlab.errors import WdlabError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of usage plus message."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _fail(message: str) -> NoReturn:
    print(f"wdlab: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _runs_root(store_path: Path) -> Path:
    """Checkpoints live beside the store, one folder per run."""
    return store_path.resolve().parent / "wdlab-runs"


def _open_store(path: str) -> Any:
    from wdlab.store import Store

    return Store(path)


# ---- run ------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    from wdlab import train
    from wdlab.config import build_config
    from wdlab.progress import make_progress

    store_path = Path(args.store)
    with _open_store(args.store) as store:
        if args.resume:
            if args.workload:
                _fail("give either WORKLOAD or --resume RUN, not both")
            run_id, config = train.resume_config(store, args.resume)
        else:
            if not args.workload:
                _fail("name a workload (e.g. `wdlab run grokking`) or --resume RUN")
            flags = {
                "optimizer.name": args.optimizer,
                "optimizer.lr": args.lr,
                "optimizer.weight_decay": args.wd,
                "optimizer.decay": args.decay,
                "steps": args.steps,
                "seed": args.seed,
                "name": args.name,
                "target": args.target,
                "train.monitor": args.monitor,
                "train.on_nonfinite": args.on_nonfinite,
                "train.threads": args.threads,
            }
            config = build_config(
                args.workload, file=args.config, flags=flags, assignments=args.set, tiny=args.tiny
            )
            run_id = None
        label = f"{config.workload}/{config.optimizer.name}"
        progress = make_progress(label, enabled=not args.quiet)
        result = train.run(
            config, store, _runs_root(store_path), progress=progress, resume_id=run_id
        )
    _print_summary(result, store_path)
    if result.status == "diverged":
        print(f"wdlab: diverged: {result.message}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _print_summary(result: Any, store_path: Path) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    verdict = "[green]reached[/green]" if result.reached else "[yellow]not reached[/yellow]"
    if result.target is None:
        verdict = "no target"
    console.print(f"run [bold]{result.run_id}[/bold] {result.status}: target {verdict}")
    if result.target is not None:
        console.print(f"  target      {result.metric} {_target_op(result)} {result.target:g}")
    if result.reached:
        console.print(
            f"  to target   {result.steps_to_target} steps, "
            f"{result.seconds_to_target:.1f} s of training"
        )
    metrics = "  ".join(f"{k} {v:.4g}" for k, v in sorted(result.final_metrics.items()))
    console.print(f"  final       step {result.step}: {metrics}")
    console.print(f"  trained     {result.train_seconds:.1f} s (evaluation excluded)")
    if result.message:
        console.print(f"  note        {result.message}")
    console.print(f"  store       {store_path}  (wdlab show {result.run_id})")


def _target_op(result: Any) -> str:
    from wdlab import workloads

    for name in workloads.available():
        cls = workloads.get(name)
        if cls.metric == result.metric:
            return ">=" if cls.higher_is_better else "<="
    return "vs"


# ---- sweep -----------------------------------------------------------------------------------


def _sweep_arguments(p: argparse.ArgumentParser) -> None:
    from wdlab.sweep import add_arguments

    add_arguments(p)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from wdlab.sweep import sweep_main

    return sweep_main(args)


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    from wdlab.bench import add_arguments

    add_arguments(p)


def _cmd_bench(args: argparse.Namespace) -> int:
    from wdlab.bench import bench_main

    return bench_main(args)


def _cmd_report(args: argparse.Namespace) -> int:
    from wdlab.html_report import build_report

    with _open_store(args.store) as store:
        path = build_report(store, args.ref, Path(args.output))
    print(f"wrote {path}")
    return 0


# ---- runs / show / export ----------------------------------------------------------------------


def _cmd_runs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    with _open_store(args.store) as store:
        records = store.list_runs(workload=args.workload, status=args.status, limit=args.limit)
    table = Table(title=f"runs in {args.store}")
    for column in ("id", "name", "workload", "optimizer", "lr", "wd", "seed", "status",
                   "metric", "steps to target"):
        table.add_column(column)
    for rec in records:
        opt = rec.config.get("optimizer", {})
        result = rec.result or {}
        final = result.get("final_metrics", {})
        metric = result.get("metric")
        table.add_row(
            rec.id,
            rec.name or "",
            rec.workload,
            str(opt.get("name", "")),
            f"{opt.get('lr', float('nan')):.3g}",
            f"{opt.get('weight_decay', float('nan')):.3g}",
            str(rec.seed),
            rec.status,
            f"{final[metric]:.4g}" if metric in final else "",
            str(result.get("steps_to_target") or ""),
        )
    Console().print(table)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from rich.console import Console

    from wdlab.report import plot_run

    with _open_store(args.store) as store:
        rec = store.get_run(args.run)
        metrics = store.metrics(rec.id)
    console = Console(highlight=False)
    console.print(f"run [bold]{rec.id}[/bold] ({rec.name or 'unnamed'}): {rec.workload}, "
                  f"status {rec.status}")
    opt = rec.config.get("optimizer", {})
    console.print("  optimizer   " + ", ".join(f"{k}={v}" for k, v in opt.items()))
    console.print(f"  seed        {rec.seed}   data {rec.data_hash or '-'}")
    for key, value in (rec.result or {}).items():
        if key != "final_metrics":
            console.print(f"  {key:<11} {value}")
    for key, value in sorted((rec.result or {}).get("final_metrics", {}).items()):
        console.print(f"  {key:<11} {value:.5g}")
    if rec.message:
        console.print(f"  message     {rec.message}")
    out = Path(args.out) if args.out else Path(args.store).resolve().parent / "wdlab-runs" / rec.id
    if not metrics:
        console.print("  no metrics recorded yet")
        return 0
    paths = plot_run(metrics, out, title=f"{rec.workload} {rec.id}")
    for path in paths:
        console.print(f"  plot        {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    with _open_store(args.store) as store:
        rec = store.get_run(args.run)
        if args.format == "csv":
            out = Path(args.output or f"{rec.id}.csv")
            store.export_csv(rec.id, out)
        else:
            out = Path(args.output or f"tb/{rec.id}")
            store.export_tensorboard(rec.id, out)
    print(f"wrote {out}")
    return 0


# ---- inspect ----------------------------------------------------------------------------------


def load_model(spec: str, assignments: Sequence[str] = ()) -> tuple[Any, Any]:
    """(model, example_input) from a workload name or 'package.module:factory'."""
    from wdlab import workloads

    if ":" not in spec:
        from wdlab.config import build_config
        config = build_config(spec, assignments=list(assignments))
        workload = workloads.from_config(config, seed=0)
        return workload.build_model(), workload.example_input()
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise WdlabError(f"cannot import {module_name!r} for MODEL {spec!r}: {err}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise WdlabError(f"{spec!r}: {module_name} has no callable {attr!r}; "
                         "MODEL is a workload name or package.module:factory")
    return factory(), None


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from wdlab.groups import classify

    model, example = load_model(args.model, args.set)
    infos = classify(model, example_input=example)
    table = Table(title=f"parameters of {args.model}")
    for column in ("name", "shape", "role", "scale-inv.", "decay", "numel"):
        table.add_column(column, justify="right" if column == "numel" else "left")
    for info in infos:
        name = info.name + (f" (= {', '.join(info.tied_to)})" if info.tied_to else "")
        table.add_row(
            name,
            "x".join(map(str, info.shape)),
            info.role,
            "yes" if info.scale_invariant else "",
            "yes" if info.decay else "",
            f"{info.numel:,}",
        )
    console = Console()
    console.print(table)
    total = sum(i.numel for i in infos)
    decayed = sum(i.numel for i in infos if i.decay)
    invariant = sum(i.numel for i in infos if i.scale_invariant)
    console.print(f"{total:,} parameters; {decayed:,} decayed; {invariant:,} scale-invariant")
    console.print(_memory_table(model, infos))
    return 0


def _memory_table(model: Any, infos: list[Any]) -> Any:
    """Optimizer state each registered optimizer would keep for this model."""
    from rich.table import Table

    from wdlab import optim
    from wdlab.groups import param_groups

    groups = param_groups(model, lr=1e-3, weight_decay=0.0, infos=infos)
    table = Table(title="optimizer state (each optimizer's default hyperparameters)")
    for column in ("optimizer", "bytes / parameter", "total"):
        table.add_column(column, justify="left" if column == "optimizer" else "right")
    for name in optim.available():
        optimizer = optim.create(name, [dict(g) for g in groups], lr=1e-3)
        size = optim.state_bytes(optimizer)
        table.add_row(name, f"{optim.state_bytes_per_param(optimizer):.2f}", _human_bytes(size))
    return table


def _human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GB"


# ---- transfer / coordcheck -------------------------------------------------------------------


def _cmd_transfer(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from wdlab.scaling import transfer_table

    try:
        rows = transfer_table(args.rule, args.from_width, args.to_width, args.lr, args.wd,
                              decay_mode=args.decay)
    except ValueError as err:
        raise WdlabError(str(err)) from None
    table = Table(title=f"{args.rule}: tuned at width {args.from_width} "
                        f"(lr {args.lr:g}, wd {args.wd:g}) -> width {args.to_width}")
    for column in ("role", "lr", "weight decay", "init std x", "forward x"):
        table.add_column(column, justify="left" if column == "role" else "right")

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.4g}"

    for row in rows:
        table.add_row(row["role"], fmt(row["lr"]), fmt(row["weight_decay"]),
                      fmt(row["init_std_mult"]), fmt(row["forward_mult"]))
    Console().print(table)
    return 0


def _cmd_coordcheck(args: argparse.Namespace) -> int:
    from wdlab import workloads
    from wdlab.coordcheck import (
        coord_check,
        coord_slopes,
        plot_coord_check,
        plot_singular_values,
        singular_value_check,
    )

    widths = _int_list(args.widths, "--widths")
    try:
        workloads.get(args.workload)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        data = coord_check(args.workload, widths, steps=args.steps, rule=args.rule,
                           tiny=args.tiny)
        print(f"coord check ({args.rule}): log-log slope of mean |activation| vs width "
              "(0 = flat)")
        for layer, slope in coord_slopes(data).items():
            print(f"  {layer:<40} {slope:+.3f}")
        print(f"wrote {plot_coord_check(data, out / f'coordcheck_{args.rule}.png')}")
        if args.sv_steps:
            sv = singular_value_check(args.workload, widths, steps=args.sv_steps,
                                      rule=args.rule, tiny=args.tiny)
            print(f"wrote {plot_singular_values(sv, out / f'singular_values_{args.rule}.png')}")
    except ValueError as err:
        raise WdlabError(str(err)) from None
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise WdlabError(f"{flag} takes comma-separated integers, e.g. 64,128,256") from None
    if len(values) < 2 or min(values) < 1:
        raise WdlabError(f"{flag} needs at least two positive widths, got {text!r}")
    return values


# ---- parser ---------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wdlab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"wdlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    def store_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", default="wdlab.db", help="run store (SQLite file)")

    p = add("run", _cmd_run, "train one run of a workload to its target")
    p.add_argument("workload", nargs="?", help="grokking | charlm | digits | teacher")
    p.add_argument("--optimizer", help="an optimizer name (see wdlab inspect for the list)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--wd", type=float, help="weight decay coefficient")
    p.add_argument("--decay", choices=["decoupled", "independent", "l2"])
    p.add_argument("--steps", type=_positive_int, help="step budget")
    p.add_argument("--seed", type=int)
    p.add_argument("--target", type=float, help="override the workload's validation target")
    p.add_argument("--name", help="a name for the run")
    p.add_argument("--config", help="TOML file with settings (see docs/running.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting, e.g. --set model.placement=peri (repeatable)")
    p.add_argument("--tiny", action="store_true", help="the workload's tiny test configuration")
    p.add_argument("--monitor", choices=["off", "light", "full"])
    p.add_argument("--on-nonfinite", choices=["stop", "skip"], dest="on_nonfinite")
    p.add_argument("--threads", type=_positive_int, help="torch threads")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted or killed run")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    store_option(p)

    p = add("sweep", _cmd_sweep, "run (or resume) a sweep of a workload over a grid or Halton set")
    _sweep_arguments(p)
    store_option(p)

    p = add("bench", _cmd_bench, "AlgoPerf-style comparison of optimizers across the workloads")
    _bench_arguments(p)
    store_option(p)

    p = add("report", _cmd_report, "a self-contained HTML report of a sweep or a run")
    p.add_argument("ref", metavar="SWEEP_OR_RUN", help="sweep or run id, unique prefix or name")
    p.add_argument("-o", "--output", default="report.html", help="the HTML file to write")
    store_option(p)

    p = add("runs", _cmd_runs, "list runs in the store")
    p.add_argument("--workload")
    p.add_argument("--status")
    p.add_argument("--limit", type=_positive_int, default=50)
    store_option(p)

    p = add("show", _cmd_show, "summarize a run and plot its curves")
    p.add_argument("run", help="run id, unique prefix or name")
    p.add_argument("-o", "--out", help="folder for the PNG plots")
    store_option(p)

    p = add("export", _cmd_export, "export a run's metrics")
    p.add_argument("run")
    p.add_argument("--format", choices=["csv", "tensorboard"], default="csv")
    p.add_argument("-o", "--output", help="file (csv) or log directory (tensorboard)")
    store_option(p)

    from wdlab.scaling import RULES

    p = add("transfer", _cmd_transfer, "per-role lr, weight decay and init a width rule gives")
    p.add_argument("--rule", choices=RULES, required=True)
    p.add_argument("--from-width", type=_positive_int, required=True, dest="from_width")
    p.add_argument("--to-width", type=_positive_int, required=True, dest="to_width")
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--wd", type=float, required=True)
    p.add_argument("--decay", choices=["decoupled", "independent", "l2"], default="decoupled")

    p = add("coordcheck", _cmd_coordcheck, "activation size across widths (muP coord check)")
    p.add_argument("workload")
    p.add_argument("--widths", default="64,128,256,512")
    p.add_argument("--rule", choices=RULES, default="mup")
    p.add_argument("--steps", type=_positive_int, default=4, help="training steps to record")
    p.add_argument("--sv-steps", type=int, default=0, dest="sv_steps",
                   help="also train N steps per width and plot top singular values")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("-o", "--out", default=".", help="folder for the PNGs")

    p = add("inspect", _cmd_inspect, "show how wdlab classifies a model's parameters")
    p.add_argument("model", help="a workload name or package.module:factory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="workload settings, e.g. --set model.qk_norm=true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except WdlabError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        print("wdlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
