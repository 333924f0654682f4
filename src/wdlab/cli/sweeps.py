"""`wdlab sweeps`: the sweeps in a store, newest first."""

from __future__ import annotations

import argparse
from collections import Counter

from wdlab.cli import _store, tables
from wdlab.cli._args import store_option

HELP = "list the sweeps in the store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    store_option(p)


def main(args: argparse.Namespace) -> int:
    with _store.open_existing(args.store) as store:
        rows = []
        for sweep in store.list_sweeps():
            counts = Counter(t.status for t in store.trials(sweep.id))
            trials = ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
            rows.append((sweep.id, sweep.name, sweep.spec.get("workload", ""), sweep.status,
                         trials or "none", f"{sweep.created:%Y-%m-%d %H:%M}"))
    tables.print_table(f"sweeps in {args.store}",
                       ("id", "name", "workload", "status", "trials", "created"), rows)
    return 0
