"""`wdlab sweep WORKLOAD`: run (or resume) a sweep over a grid or a Halton set."""

from __future__ import annotations

import argparse
import sys

from wdlab.cli import _store
from wdlab.cli._args import EXIT_INTERRUPTED, store_option

HELP = "run (or resume) a sweep of a workload over a grid or Halton set"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from wdlab.sweep import add_arguments as sweep_arguments

    sweep_arguments(p)
    store_option(p)


def main(args: argparse.Namespace) -> int:
    from wdlab.sweep import sweep_main

    _store.check_writable_path(args.store)
    try:
        return sweep_main(args)
    except KeyboardInterrupt:
        print("wdlab: interrupted; the same `wdlab sweep` command resumes the sweep "
              "(finished trials are kept)", file=sys.stderr)
        return EXIT_INTERRUPTED
