"""`wdlab report REF`: a self-contained HTML report of a sweep or a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from wdlab.cli import _store, tables
from wdlab.cli._args import store_option
from wdlab.errors import WdlabError

HELP = "a self-contained HTML report of a sweep or a run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ref", metavar="SWEEP_OR_RUN", help="sweep or run id, unique prefix or name")
    p.add_argument("-o", "--output", default="report.html", help="the HTML file to write")
    store_option(p)


def check_output_file(path: Path, flag: str, example: str) -> None:
    """`path` can be written as a file: not a directory, and its directory exists."""
    if path.is_dir():
        raise WdlabError(f"{flag} {path} is a directory; give a file name, e.g. "
                         f"{path / example}", field=flag)
    if not path.parent.is_dir():
        raise WdlabError(f"{flag} {path}: directory {path.parent} does not exist; create it "
                         f"or give another {flag}", field=flag)


def main(args: argparse.Namespace) -> int:
    from wdlab.html_report import build_report

    out = Path(args.output)
    check_output_file(out, "-o", "report.html")
    with _store.open_existing(args.store) as store:
        path = build_report(store, args.ref, out)
    tables.say(f"wrote {path}")
    return 0
