"""`wdlab transfer`: the per-role lr, weight decay and init multipliers a width rule gives."""

from __future__ import annotations

import argparse
from typing import Any

from wdlab.cli import tables
from wdlab.cli._args import DECAY_MODES, RULES, finite_float, positive_int
from wdlab.errors import WdlabError

HELP = "per-role lr, weight decay and init a width rule gives"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rule", choices=RULES, required=True, metavar="RULE",
                   help="the width rule: %(choices)s")
    p.add_argument("--from-width", type=positive_int, required=True, dest="from_width")
    p.add_argument("--to-width", type=positive_int, required=True, dest="to_width")
    p.add_argument("--lr", type=finite_float, required=True)
    p.add_argument("--wd", type=finite_float, required=True)
    p.add_argument("--decay", choices=DECAY_MODES, default="decoupled")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def main(args: argparse.Namespace) -> int:
    from wdlab.scaling import transfer_table

    try:
        rows = transfer_table(args.rule, args.from_width, args.to_width, args.lr, args.wd,
                              decay_mode=args.decay)
    except ValueError as err:
        raise WdlabError(str(err)) from None
    tables.print_table(
        f"{args.rule}: tuned at width {args.from_width} (lr {args.lr:g}, wd {args.wd:g}) "
        f"-> width {args.to_width}",
        ("role", "lr", "weight decay", "init std x", "forward x"),
        [(r["role"], _fmt(r["lr"]), _fmt(r["weight_decay"]), _fmt(r["init_std_mult"]),
          _fmt(r["forward_mult"])) for r in rows],
        right=("lr", "weight decay", "init std x", "forward x"),
    )
    return 0
