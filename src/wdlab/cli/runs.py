"""`wdlab runs`: the runs in a store, newest first (no torch: starts fast).

Ids are never cut: the table keeps its id column whole at any terminal width, and a pipe
gets the table as wide as its content. `--format json|csv` gives every field for scripts.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from wdlab.cli import _store, tables
from wdlab.cli._args import positive_int, store_option

HELP = "list runs in the store"
COLUMNS = ("id", "name", "workload", "optimizer", "lr", "wd", "seed", "status", "metric",
           "steps to target")
# --sort key -> field of `fields(rec)`; numbers sort as numbers, blanks last
SORT_KEYS = {"created": "created", "name": "name", "workload": "workload",
             "optimizer": "optimizer", "lr": "lr", "wd": "wd", "seed": "seed",
             "status": "status", "metric": "metric_value", "steps": "steps_to_target"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload")
    p.add_argument("--status")
    p.add_argument("--sweep", metavar="SWEEP", help="only this sweep's runs (id, prefix or name)")
    p.add_argument("--sort", choices=sorted(SORT_KEYS), default="created",
                   help="order by this column (default created, newest first)")
    p.add_argument("--reverse", action="store_true", help="reverse the order")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table",
                   dest="output_format", help="table (default), or json / csv for scripts")
    p.add_argument("--limit", type=positive_int, default=50)
    store_option(p)


def _number(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else ""


def fields(rec: Any) -> dict[str, Any]:
    """Every listed field of a run record, as plain JSON values."""
    opt = rec.config.get("optimizer", {}) if isinstance(rec.config, dict) else {}
    result = rec.result if isinstance(rec.result, dict) else {}
    final = result.get("final_metrics") or {}
    metric = result.get("metric")
    value = final.get(metric) if isinstance(final, dict) and metric else None
    return {
        "id": rec.id,
        "name": rec.name or "",
        "workload": rec.workload,
        "optimizer": opt.get("name", ""),
        "lr": opt.get("lr"),
        "wd": opt.get("weight_decay"),
        "seed": rec.seed,
        "status": rec.status,
        "metric": metric,
        "metric_value": value if isinstance(value, (int, float)) else None,
        "steps_to_target": result.get("steps_to_target"),
        "step": result.get("step"),
        "sweep_id": rec.sweep_id,
        "created": rec.created.isoformat(timespec="seconds"),
    }


def row(rec: Any) -> tuple[Any, ...]:
    """One table row of a run record."""
    f = fields(rec)
    return (
        f["id"], f["name"], f["workload"], f["optimizer"], _number(f["lr"], ".3g"),
        _number(f["wd"], ".3g"), f["seed"], f["status"], _number(f["metric_value"], ".4g"),
        f["steps_to_target"] or "",
    )


def _sorted(records: list[Any], key: str, reverse: bool) -> list[Any]:
    if key == "created":  # the store's order: newest first
        return list(reversed(records)) if reverse else records
    name = SORT_KEYS[key]

    def sort_key(rec: Any) -> tuple[int, Any]:
        value = fields(rec)[name]
        if value is None or value == "":
            return (2, 0)  # blanks last, whichever the direction
        return (0, value) if isinstance(value, (int, float)) else (1, str(value))

    present = [r for r in records if sort_key(r)[0] != 2]
    blank = [r for r in records if sort_key(r)[0] == 2]
    return sorted(present, key=sort_key, reverse=reverse) + blank


def main(args: argparse.Namespace) -> int:
    with _store.open_existing(args.store) as store:
        sweep_id = store.get_sweep(args.sweep).id if args.sweep else None
        records = store.list_runs(workload=args.workload, status=args.status,
                                  sweep_id=sweep_id, limit=None)
    records = _sorted(records, args.sort, args.reverse)[: args.limit]
    if args.output_format == "json":
        json.dump([fields(r) for r in records], sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if args.output_format == "csv":
        columns = list(fields(records[0])) if records else ["id"]
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for rec in records:
            writer.writerow({k: "" if v is None else v for k, v in fields(rec).items()})
        return 0
    tables.print_table(f"runs in {args.store}", COLUMNS, [row(r) for r in records],
                       right=("lr", "wd", "seed", "metric", "steps to target"), whole=("id",))
    stopped = [r for r in records if r.status == "interrupted"]
    if stopped:
        hint = getattr(stopped[0], "resume_hint", None) or (
            f"wdlab run --resume {stopped[0].id} --store {args.store}")
        tables.say(f"{len(stopped)} interrupted; continue one with: {hint}")
    return 0
