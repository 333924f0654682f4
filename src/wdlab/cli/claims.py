"""`wdlab claims list | run NAME [--quick] | report`: the research wdlab implements, re-run
with seeds and judged by one-sided tests (wdlab.claims)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from wdlab.cli import _store, tables
from wdlab.cli._args import EXIT_INTERRUPTED, positive_int, store_option
from wdlab.errors import WdlabError

HELP = "re-run the research claims wdlab implements and judge them over seeds"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from wdlab.cli._args import Parser

    sub = p.add_subparsers(dest="action", required=True, parser_class=Parser, metavar="ACTION")
    ls = sub.add_parser("list", help="the claims, their sources and budgets")
    ls.add_argument("--quick", action="store_true", help="show the quick budgets")
    run = sub.add_parser("run", help="train a claim's sweeps (resumable) and print its verdict")
    run.add_argument("name", metavar="NAME", help="a claim name (see `wdlab claims list`), or all")
    run.add_argument("--quick", action="store_true",
                     help="CI-sized budget: checks the machinery, not the verdict")
    run.add_argument("--workers", type=positive_int, default=1, help="trials trained at once")
    run.add_argument("--backend", choices=["local", "ray"], default="local")
    run.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    store_option(run)
    rep = sub.add_parser("report", help="HTML page per claim, an index and README.md table")
    rep.add_argument("-o", "--output", default="claims-report",
                     help="directory to write (default claims-report)")
    rep.add_argument("--quick", action="store_true", help="report the quick-budget runs")
    store_option(rep)
    for parser in (ls, run, rep):
        parser.set_defaults(handler=main)


def _list(args: argparse.Namespace) -> int:
    from wdlab.claims import all_claims

    rows = []
    for claim in all_claims():
        missing = claim.missing()
        rows.append([claim.name, claim.title, "needs " + "; ".join(missing) if missing else "ready",
                     claim.budget(args.quick)])  # fmt: skip
    tables.print_table("wdlab claims" + (" (quick budgets)" if args.quick else ""),
                       ["claim", "statement", "status", "budget"], rows)  # fmt: skip
    return 0


def _run(args: argparse.Namespace) -> int:
    from wdlab.claims import all_claims, get
    from wdlab.claims.runner import judge, needs_message, run_claim
    from wdlab.sweep import SweepInterrupted

    claims = all_claims() if args.name == "all" else [get(args.name)]
    _store.check_writable_path(args.store)
    store_path = Path(args.store)
    if len(claims) == 1 and claims[0].missing():
        raise WdlabError(needs_message(claims[0], claims[0].missing()), field="claim")
    lines = []
    for claim in claims:
        if claim.missing():
            lines.append(f"{claim.name}: skipped: {needs_message(claim, claim.missing())}")
            tables.say(lines[-1])
            continue
        try:
            run_claim(claim, store_path, quick=args.quick, workers=args.workers,
                      backend=args.backend, address=args.address, progress=not args.quiet)
        except SweepInterrupted as stopped:
            print(f"wdlab claims: {claim.name}: {stopped}", file=sys.stderr)
            print(f"continue with: {shlex.join(_command(args))}", file=sys.stderr)
            return EXIT_INTERRUPTED
        with _store.open_existing(args.store) as store:
            outcome = judge(claim, store, quick=args.quick)
        tables.say(outcome.line())
    return 0


def _command(args: argparse.Namespace) -> list[str]:
    """The `wdlab claims run` command line that continues this one."""
    argv = ["wdlab", "claims", "run", args.name, "--store", args.store]
    if args.quick:
        argv.append("--quick")
    if args.workers != 1:
        argv += ["--workers", str(args.workers)]
    if args.backend != "local":
        argv += ["--backend", args.backend]
    if args.address:
        argv += ["--address", args.address]
    return argv


def _report(args: argparse.Namespace) -> int:
    from wdlab.claims import all_claims
    from wdlab.claims.page import write_report
    from wdlab.claims.runner import judge

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise WdlabError(f"-o {out} is a file; give a directory for the report", field="-o")
    if not out.parent.is_dir():
        raise WdlabError(f"-o {out}: directory {out.parent} does not exist; create it or give "
                         "another -o", field="-o")  # fmt: skip
    with _store.open_existing(args.store) as store:
        outcomes = [judge(c, store, quick=args.quick) for c in all_claims()]
        write_report(outcomes, store, out)
    for o in outcomes:
        tables.say(o.line())
    tables.say(f"wrote {out / 'index.html'} and {out / 'README.md'}")
    return 0


def main(args: argparse.Namespace) -> int:
    action = {"list": _list, "run": _run, "report": _report}[args.action]
    code = action(args)
    sys.stdout.flush()
    return code
