"""`wdlab compare RUN RUN ...`: overlay any runs' curves into one PNG or HTML page."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from wdlab.cli import _store, tables
from wdlab.cli._args import store_option
from wdlab.cli.report import check_output_file
from wdlab.errors import WdlabError

HELP = "overlay the curves of any runs (PNG or HTML)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run ids, unique prefixes or names")
    p.add_argument("--metric", action="append", default=[], metavar="NAME",
                   help="a metric to plot (repeatable; default train_loss, val_loss and the "
                   "runs' target metric)")
    p.add_argument("-o", "--output", default="compare.png",
                   help="compare.png (default) or a .html page with the plot embedded")
    store_option(p)


def main(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.suffix.lower() not in (".png", ".html", ".htm"):
        raise WdlabError(f"-o {out}: give a .png or .html file, e.g. -o compare.png",
                         field="-o")
    check_output_file(out, "-o", "compare.png")
    if len(args.runs) < 2:
        raise WdlabError("wdlab compare needs at least two runs, e.g. "
                         "`wdlab compare RUN_A RUN_B`", field="runs")
    with _store.open_existing(args.store) as store:
        runs = [store.get_run(ref) for ref in args.runs]
        if len({r.id for r in runs}) < len(runs):
            raise WdlabError("wdlab compare: a run is named twice; give each run once",
                             field="runs")
        series = [store.metrics(r.id) for r in runs]
    from wdlab import compare

    metrics = args.metric or compare.default_metrics(runs, series)
    missing = [m for m in metrics if not any(s.get(m) for s in series)]
    if missing or not metrics:
        known = sorted(set().union(*series))
        raise WdlabError(f"no run has metric {(missing or ['any'])[0]!r}; they have: "
                         f"{', '.join(known[:12]) or 'nothing recorded yet'}", field="--metric")
    names = compare.labels(runs)
    title = " vs ".join(sorted({r.workload for r in runs}))
    if out.suffix.lower() == ".png":
        compare.plot_compare(names, series, metrics, out, title)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            png = compare.plot_compare(names, series, metrics, Path(tmp) / "c.png", title)
            compare.write_html(out, png, runs, names)
    for name in names:
        tables.say(f"  {name}")
    tables.say(f"wrote {out}")
    return 0
