"""`wdlab rm REF...`: delete runs or sweeps (a sweep with its runs) and their checkpoints.

All or nothing: every REF is resolved and checked first (unknown, ambiguous, or a run that
a live process is training: an error, nothing removed); the checkpoint folders are renamed
aside, the store rows go in one transaction, and only then are the folders deleted — if the
store refuses, the folders are renamed back. Asks before deleting unless --yes; without a
terminal to ask on, --yes is required.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from wdlab.cli import _store, tables
from wdlab.cli._args import store_option
from wdlab.errors import WdlabError

HELP = "delete runs or sweeps (with their runs) and their checkpoints"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("refs", nargs="+", metavar="RUN_OR_SWEEP",
                   help="run or sweep ids, unique prefixes or names")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    store_option(p)


def _resolve(store: Any, ref: str) -> tuple[list[Any], list[Any]]:
    """(runs, sweeps) that `ref` names: a sweep (and its runs) first, else a run."""
    try:
        sweep = store.get_sweep(ref)
    except WdlabError:
        sweep = None
    if sweep is not None:
        return store.list_runs(sweep_id=sweep.id), [sweep]
    try:
        return [store.get_run(ref)], []
    except WdlabError:
        raise WdlabError(f"{ref!r} is neither a run nor a sweep in store {store.path}; list "
                         "them with `wdlab runs` and `wdlab sweeps`", field="ref") from None


def _refuse_live(runs: list[Any]) -> None:
    from wdlab.lease import describe

    for run in runs:
        if run.status in ("running", "created") and run.owner:
            raise WdlabError(f"run {run.id} is being trained by another process "
                             f"({describe(run.owner)}); stop it first, then remove it",
                             field="ref")


def _confirm(runs: list[Any], sweeps: list[Any], yes: bool) -> bool:
    if yes:
        return True
    what = f"{len(runs)} run(s)" + (f" and {len(sweeps)} sweep(s)" if sweeps else "")
    if not sys.stdin.isatty():
        raise WdlabError(f"wdlab rm would delete {what} with their checkpoints; there is no "
                         "terminal to confirm on, so add --yes", field="yes")
    for sweep in sweeps:
        tables.say(f"  sweep {sweep.id}  {sweep.name}")
    for run in runs:
        tables.say(f"  run   {run.id}  {run.name}  ({run.status})")
    answer = input(f"delete {what} and their checkpoints? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def main(args: argparse.Namespace) -> int:
    root = _store.runs_root(args.store)
    with _store.open_existing(args.store) as store:
        runs: dict[str, Any] = {}
        sweeps: dict[str, Any] = {}
        for ref in args.refs:
            found_runs, found_sweeps = _resolve(store, ref)
            runs.update((r.id, r) for r in found_runs)
            sweeps.update((s.id, s) for s in found_sweeps)
        _refuse_live(list(runs.values()))
        if not _confirm(list(runs.values()), list(sweeps.values()), args.yes):
            tables.say("nothing deleted")
            return 0
        moved: list[tuple[Path, Path]] = []
        try:
            for run_id in runs:
                folder = root / run_id
                if folder.is_dir():
                    aside = folder.with_name(f".rm-{run_id}")
                    folder.rename(aside)
                    moved.append((folder, aside))
            store.delete_many(list(runs), list(sweeps))
        except BaseException:
            for folder, aside in reversed(moved):
                aside.rename(folder)
            raise
    for _folder, aside in moved:
        shutil.rmtree(aside, ignore_errors=True)
    sweep_text = f" and {len(sweeps)} sweep(s)" if sweeps else ""
    tables.say(f"deleted {len(runs)} run(s){sweep_text} and {len(moved)} checkpoint folder(s)")
    return 0
