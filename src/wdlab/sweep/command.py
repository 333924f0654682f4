"""The `wdlab sweep` command: its flags, flags -> spec (and back, for the resume line), the
results table, and the exit codes (0 done, 130 interrupted with the command to continue)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from wdlab.errors import ConfigError
from wdlab.sweep.results import SweepSummary
from wdlab.sweep.spec import (
    FLAG_KEYS,
    MAX_TRIALS,
    Axis,
    RangeSpec,
    SweepSpec,
    parse_axis,
    parse_grid,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `wdlab sweep` options (the CLI adds --store itself or calls this with it)."""
    p.add_argument("workload", help="grokking | charlm | digits | teacher")
    p.add_argument("--optimizer", metavar="NAMES", help="optimizers to sweep, e.g. adamw,lion")
    p.add_argument("--lr", metavar="AXIS", help="lo:hi:n (log-spaced) or a list, e.g. 1e-4:1e-1:7")
    p.add_argument("--wd", metavar="AXIS", help="weight decays, e.g. 0,0.01,0.1")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=AXIS",
        help="any setting as an axis, e.g. --grid model.width=32,64 (repeatable)",
    )
    p.add_argument(
        "--seeds",
        default="1",
        metavar="N|LIST",
        help="N seeds 0..N-1, or a list such as 0,5,7; one seed s alone: 's,' (default 1)",
    )
    p.add_argument("--sample", choices=["grid", "halton"], default="grid")
    p.add_argument("--trials", type=int, metavar="N", help="number of Halton points")
    p.add_argument(
        "--sample-seed",
        type=int,
        default=0,
        dest="sample_seed",
        help="scrambling seed of the Halton sequence",
    )
    p.add_argument("--steps", type=int, help="step budget of every trial")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a fixed setting for every trial (repeatable)",
    )
    p.add_argument("--config", help="TOML file with base settings")
    p.add_argument("--tiny", action="store_true", help="the workload's tiny test configuration")
    p.add_argument("--name", help="a name for the sweep")
    p.add_argument("--workers", type=int, default=1, help="trials trained at once")
    p.add_argument("--backend", choices=["local", "ray"], default="local")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument(
        "--checkpoint-dir",
        dest="checkpoint_dir",
        metavar="DIR",
        help="where trials write checkpoints (default: wdlab-runs beside the store); with Ray "
        "on several machines, a directory every node mounts at the same path",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument(
        "--max-trials",
        type=int,
        default=MAX_TRIALS,
        dest="max_trials",
        metavar="N",
        help=f"refuse a sweep of more trials than this (default {MAX_TRIALS:,})",
    )


def _parse_seeds(text: str) -> int | list[int]:
    """'3' is a count (seeds 0, 1, 2); '0,5,7' a list; '5,' the list of one seed, 5."""
    text = str(text).strip()
    one_listed = text.endswith(",") and text.count(",") == 1
    value = parse_axis(text.rstrip(",") if one_listed else text, flag="--seeds")
    if isinstance(value, RangeSpec) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError(f"--seeds {text!r}: give a count (3) or a list (0,5,7)", field="--seeds")
    return value[0] if len(value) == 1 and not one_listed else value


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    """A SweepSpec from parsed `wdlab sweep` arguments."""
    axes: dict[str, Axis] = {}
    for flag, key in FLAG_KEYS.items():
        text = getattr(args, flag.lstrip("-"))
        if text is not None:
            axes[key] = parse_axis(text, flag=flag)
    for item in args.grid:
        key, axis = parse_grid(item)
        if key in axes:
            raise ConfigError(
                f"--grid {key} is given twice (or also by its own flag)", field="--grid"
            )
        axes[key] = axis
    assignments = list(args.set)
    if args.steps is not None:
        assignments.insert(0, f"steps={args.steps}")
    return SweepSpec.create(
        workload=args.workload,
        axes=axes,
        seeds=_parse_seeds(args.seeds),
        sample=args.sample,
        n_trials=args.trials,
        sample_seed=args.sample_seed,
        assignments=assignments,
        tiny=args.tiny,
        config_file=args.config,
        name=args.name,
    )


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_summary(summary: SweepSummary, stream: Any = None) -> None:
    """The trials as a table (rich on a terminal, aligned text elsewhere) and the counts."""
    stream = stream or sys.stdout
    rows = summary.rows()
    columns = list(dict.fromkeys(k for r in rows for k in r if k != "error"))
    if any(r["error"] for r in rows):
        columns.append("error")
    counts = ", ".join(f"{k} {v}" for k, v in summary.counts.items() if v)
    verb = "created" if summary.created else "resumed"
    title = (
        f"sweep {summary.name} ({summary.sweep_id}, {verb}): {counts}; {summary.wall_seconds:.1f} s"
    )
    if stream.isatty():
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        # Names, params and errors are stored strings: escaped, never read as markup.
        table = Table(title=escape(title))
        for c in columns:
            table.add_column(escape(c))
        for r in rows:
            table.add_row(*(escape(_format(r.get(c))) for c in columns))
        Console(file=stream).print(table)
        return
    cells = [[_format(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print(title, file=stream)
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)), file=stream)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)), file=stream)


def _axis_text(axis: Axis) -> str:
    if isinstance(axis, RangeSpec):
        ends = [str(int(v)) if axis.integer else repr(float(v)) for v in (axis.lo, axis.hi)]
        return ":".join(ends + ([str(axis.n)] if axis.n is not None else []))
    return ",".join(_item_text(v) for v in axis)


def _item_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def command_for(
    spec: SweepSpec,
    *,
    store: str,
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    max_trials: int = MAX_TRIALS,
    checkpoint_dir: str | None = None,
) -> str | None:
    """The `wdlab sweep` command line that builds exactly this spec (checked by parsing it
    back and comparing identities), or None when the spec has no such command (e.g. a list
    item with a comma); the command that continues an interrupted sweep."""
    keys = {key: flag for flag, key in FLAG_KEYS.items()}
    argv = [spec.workload]
    for key, axis in spec.axes.items():
        text = _axis_text(axis)
        argv += [keys[key], text] if key in keys else ["--grid", f"{key}={text}"]
    seeds = spec.seeds
    if isinstance(seeds, int):
        if seeds != 1:
            argv += ["--seeds", str(seeds)]
    else:
        argv += ["--seeds", ",".join(map(str, seeds)) + ("," if len(seeds) == 1 else "")]
    if spec.sample != "grid":
        argv += ["--sample", spec.sample, "--trials", str(spec.n_trials)]
    if spec.sample_seed:
        argv += ["--sample-seed", str(spec.sample_seed)]
    for item in spec.assignments:
        argv += ["--set", item]
    if spec.tiny:
        argv.append("--tiny")
    if spec.config_file is not None:
        argv += ["--config", spec.config_file]
    if spec.name is not None:
        argv += ["--name", spec.name]
    argv += ["--store", store]
    if workers != 1:
        argv += ["--workers", str(workers)]
    if backend != "local":
        argv += ["--backend", backend]
    if address is not None:
        argv += ["--address", address]
    if checkpoint_dir is not None:
        argv += ["--checkpoint-dir", checkpoint_dir]
    if max_trials != MAX_TRIALS:
        argv += ["--max-trials", str(max_trials)]
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    parser.add_argument("--store")
    try:
        again = spec_from_args(parser.parse_args(argv))
        if again.identity(with_seeds=True) != spec.identity(with_seeds=True):
            return None
    except (ConfigError, SystemExit, ValueError):
        return None
    return shlex.join(["wdlab", "sweep", *argv])


def sweep_main(args: argparse.Namespace) -> int:
    """`wdlab sweep`: build the spec, run or resume it, print the table. Exit 0 when every
    trial ended (failed trials are results too, listed with their error); 130 when Ctrl-C
    stopped it, with the command that continues it."""
    from wdlab.sweep import SweepInterrupted, run_sweep

    spec = spec_from_args(args)
    store = str(getattr(args, "store", "wdlab.db"))
    max_trials = getattr(args, "max_trials", MAX_TRIALS)
    checkpoint_dir = getattr(args, "checkpoint_dir", None)
    try:
        summary = run_sweep(
            spec,
            Path(store),
            workers=args.workers,
            backend=args.backend,
            address=args.address,
            progress=not args.quiet,
            max_trials=max_trials,
            checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir),
        )
    except SweepInterrupted as stopped:
        command = command_for(
            spec,
            store=store,
            workers=args.workers,
            backend=args.backend,
            address=args.address,
            max_trials=max_trials,
            checkpoint_dir=checkpoint_dir,
        )
        print(f"wdlab sweep: {stopped}", file=sys.stderr)
        print(
            f"continue with: {command}" if command else "continue with the same command",
            file=sys.stderr,
        )
        return 130
    print_summary(summary)
    return 0
