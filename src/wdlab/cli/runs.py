"""`wdlab runs`: the runs in a store, newest first (no torch: starts fast)."""

from __future__ import annotations

import argparse
from typing import Any

from wdlab.cli import _store, tables
from wdlab.cli._args import positive_int, store_option

HELP = "list runs in the store"
COLUMNS = ("id", "name", "workload", "optimizer", "lr", "wd", "seed", "status", "metric",
           "steps to target")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload")
    p.add_argument("--status")
    p.add_argument("--limit", type=positive_int, default=50)
    store_option(p)


def _number(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else ""


def row(rec: Any) -> tuple[Any, ...]:
    """One table row of a run record."""
    opt = rec.config.get("optimizer", {}) if isinstance(rec.config, dict) else {}
    result = rec.result if isinstance(rec.result, dict) else {}
    final = result.get("final_metrics") or {}
    metric = result.get("metric")
    return (
        rec.id,
        rec.name or "",
        rec.workload,
        opt.get("name", ""),
        _number(opt.get("lr"), ".3g"),
        _number(opt.get("weight_decay"), ".3g"),
        rec.seed,
        rec.status,
        _number(final.get(metric), ".4g") if isinstance(final, dict) and metric else "",
        result.get("steps_to_target") or "",
    )


def main(args: argparse.Namespace) -> int:
    with _store.open_existing(args.store) as store:
        records = store.list_runs(workload=args.workload, status=args.status, limit=args.limit)
    tables.print_table(f"runs in {args.store}", COLUMNS, [row(r) for r in records],
                       right=("lr", "wd", "seed", "metric", "steps to target"))
    stopped = [r for r in records if r.status == "interrupted"]
    if stopped:
        hint = getattr(stopped[0], "resume_hint", None) or (
            f"wdlab run --resume {stopped[0].id} --store {args.store}")
        tables.say(f"{len(stopped)} interrupted; continue one with: {hint}")
    return 0
