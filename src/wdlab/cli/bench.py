"""`wdlab bench`: an AlgoPerf-style comparison of optimizers across the workloads."""

from __future__ import annotations

import argparse

from wdlab.cli import _store
from wdlab.cli._args import store_option

HELP = "AlgoPerf-style comparison of optimizers across the workloads"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from wdlab.bench import add_arguments as bench_arguments

    bench_arguments(p)
    store_option(p)


def main(args: argparse.Namespace) -> int:
    from wdlab.bench import bench_main

    _store.check_writable_path(args.store)
    return bench_main(args)
