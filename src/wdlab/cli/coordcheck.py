"""`wdlab coordcheck WORKLOAD`: activation size across widths (the muP coord check)."""

from __future__ import annotations

import argparse
from pathlib import Path

from wdlab.cli import tables
from wdlab.cli._args import RULES, positive_int
from wdlab.errors import WdlabError

HELP = "activation size across widths (muP coord check)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workload")
    p.add_argument("--widths", default="64,128,256,512")
    p.add_argument("--rule", choices=RULES, default="mup", metavar="RULE",
                   help="the width rule: %(choices)s (default mup)")
    p.add_argument("--steps", type=positive_int, default=4, help="training steps to record")
    p.add_argument("--sv-steps", type=int, default=0, dest="sv_steps",
                   help="also train N steps per width and plot top singular values")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("-o", "--out", default=".", help="folder for the PNGs")


def int_list(text: str, flag: str) -> list[int]:
    """'64,128' -> [64, 128]: at least two positive widths."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise WdlabError(f"{flag} takes comma-separated integers, e.g. 64,128,256") from None
    if len(values) < 2 or min(values) < 1:
        raise WdlabError(f"{flag} needs at least two positive widths, got {text!r}")
    return values


def main(args: argparse.Namespace) -> int:
    from wdlab import workloads
    from wdlab.coordcheck import (
        coord_check,
        coord_slopes,
        coord_verdict,
        plot_coord_check,
        plot_singular_values,
        singular_value_check,
    )

    widths = int_list(args.widths, "--widths")
    if args.sv_steps < 0:
        raise WdlabError(f"--sv-steps must be >= 0, got {args.sv_steps}", field="--sv-steps")
    try:
        workloads.get(args.workload)
    except ValueError as err:
        raise WdlabError(f"{err} (the WORKLOAD argument)") from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise WdlabError(f"-o {out} is a file; give a folder for the PNGs", field="-o")
    try:
        data = coord_check(args.workload, widths, steps=args.steps, rule=args.rule,
                           tiny=args.tiny)
        sv = (singular_value_check(args.workload, widths, steps=args.sv_steps, rule=args.rule,
                                   tiny=args.tiny) if args.sv_steps else None)
    except ValueError as err:
        raise WdlabError(str(err)) from None
    tables.say(f"coord check ({args.rule}): log-log slope of mean |activation| vs width "
               "(0 = flat)")
    slopes = coord_slopes(data)
    for layer, slope in slopes.items():
        tables.say(f"  {layer:<40} {slope:+.3f}")
    passed, verdict = coord_verdict(slopes)
    tables.say((verdict, "green" if passed else "red"))
    out.mkdir(parents=True, exist_ok=True)
    tables.say(f"wrote {plot_coord_check(data, out / f'coordcheck_{args.rule}.png')}")
    if sv is not None:
        tables.say(f"wrote {plot_singular_values(sv, out / f'singular_values_{args.rule}.png')}")
    return 0
