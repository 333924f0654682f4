"""`wdlab export RUN`: a run's metrics as CSV or TensorBoard scalars."""

from __future__ import annotations

import argparse
from pathlib import Path

from wdlab.cli import _store, tables
from wdlab.cli._args import store_option
from wdlab.cli.report import check_output_file
from wdlab.errors import WdlabError

HELP = "export a run's metrics"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run id, unique prefix or name")
    p.add_argument("--format", choices=["csv", "tensorboard"], default="csv")
    p.add_argument("-o", "--output", help="file (csv) or log directory (tensorboard)")
    store_option(p)


def main(args: argparse.Namespace) -> int:
    with _store.open_existing(args.store) as store:
        rec = store.get_run(args.run)
        if args.format == "csv":
            out = Path(args.output or f"{rec.id}.csv")
            check_output_file(out, "-o", f"{rec.id}.csv")
            store.export_csv(rec.id, out)
        else:
            out = Path(args.output or f"tb/{rec.id}")
            if out.exists() and not out.is_dir():
                raise WdlabError(f"-o {out} is a file; TensorBoard writes a log directory, "
                                 f"give a directory, e.g. tb/{rec.id}", field="-o")
            store.export_tensorboard(rec.id, out)
    tables.say(f"wrote {out}")
    return 0
