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


def _check_base_settings(args: argparse.Namespace) -> None:
    """The workload, --config file and --set values every trial shares, validated before the
    sweep opens (and so creates) its store: a typo must not leave a new store behind."""
    from wdlab.config import build_config

    build_config(args.workload, file=args.config, assignments=list(args.set), tiny=args.tiny)


def main(args: argparse.Namespace) -> int:
    from wdlab.sweep import sweep_main

    _store.check_writable_path(args.store)
    _check_base_settings(args)
    try:
        return sweep_main(args)
    except KeyboardInterrupt:
        print("wdlab: interrupted; the same `wdlab sweep` command resumes the sweep "
              "(finished trials are kept)", file=sys.stderr)
        return EXIT_INTERRUPTED
