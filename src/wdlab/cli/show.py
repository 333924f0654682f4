"""`wdlab show RUN`: a run's settings and result, and PNG plots of its curves."""

from __future__ import annotations

import argparse
from pathlib import Path

from wdlab.cli import _store, tables
from wdlab.cli._args import store_option

HELP = "summarize a run and plot its curves"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run id, unique prefix or name")
    p.add_argument("-o", "--out", help="folder for the PNG plots")
    p.add_argument("--no-plots", action="store_true", dest="no_plots",
                   help="print the summary only (no matplotlib, starts fast)")
    store_option(p)


def _format(value: object) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def main(args: argparse.Namespace) -> int:
    with _store.open_existing(args.store) as store:
        rec = store.get_run(args.run)
        metrics = store.metrics(rec.id)
    say = tables.say
    say("run ", (rec.id, "bold"), f" ({rec.name or 'unnamed'}): {rec.workload}, "
        f"status {rec.status}")
    opt = rec.config.get("optimizer", {}) if isinstance(rec.config, dict) else {}
    say("  optimizer   " + ", ".join(f"{k}={v}" for k, v in opt.items()))
    say(f"  seed        {rec.seed}   data {rec.data_hash or '-'}")
    result = rec.result if isinstance(rec.result, dict) else {}
    for key, value in result.items():
        if key not in ("final_metrics", "traceback"):
            say(f"  {key:<11} {_format(value)}")
    final = result.get("final_metrics") or {}
    for key, value in sorted(final.items() if isinstance(final, dict) else []):
        say(f"  {key:<11} {_format(value)}")
    if rec.message:
        say(f"  message     {rec.message}")
    if isinstance(result.get("traceback"), str):  # a failed run: where it failed
        say("  traceback")
        for text in result["traceback"].rstrip().splitlines():
            say(f"    {text}")
    hint = getattr(rec, "resume_hint", None)
    if hint or rec.status == "interrupted":
        say(f"  resume      {hint or f'wdlab run --resume {rec.id} --store {args.store}'}")
    if not metrics:
        say("  no metrics recorded yet")
        return 0
    if args.no_plots:
        return 0
    from wdlab.report import plot_run

    out = Path(args.out) if args.out else _store.runs_root(args.store) / rec.id
    for path in plot_run(metrics, out, title=f"{rec.workload} {rec.id}"):
        say(f"  plot        {path}")
    return 0
