"""Overlay any runs' curves (`wdlab compare`): one panel per metric, one line per run.

Each run is labelled by its id plus the settings in which the compared runs differ (e.g.
`optimizer.weight_decay=0.1`), so `grokking` against `grokking --wd 0.1` reads at a glance.
The output is a PNG, or a self-contained HTML page (the PNG embedded, a table of the runs).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wdlab.atomic import atomic_open
from wdlab.report import _figure, _finish, _plot, _positive, _save, safe_title

Series = list[tuple[int, float]]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_settings(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Dotted keys whose values are not the same in every config (name excluded)."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if k != "name" and len({repr(f.get(k)) for f in flat}) > 1]


def labels(runs: Sequence[Any]) -> list[str]:
    """'<id> key=value ...' for each run: the settings that tell the runs apart."""
    keys = differing_settings([r.config for r in runs])
    out = []
    for run in runs:
        flat = flatten(run.config)
        parts = [f"{k.removeprefix('optimizer.')}={flat.get(k)}" for k in keys[:4]]
        out.append(" ".join([run.id, *parts]) if parts else f"{run.id} {run.name}")
    return out


def default_metrics(runs: Sequence[Any], series: Sequence[Mapping[str, Series]]) -> list[str]:
    """train_loss, val_loss and each run's target metric, where any run has them."""
    wanted = ["train_loss", "val_loss"]
    for run in runs:
        metric = (run.result or {}).get("metric")
        if metric and metric not in wanted:
            wanted.append(metric)
    return [m for m in wanted if any(s.get(m) for s in series)]


def plot_compare(
    names: Sequence[str], series: Sequence[Mapping[str, Series]], metrics: Sequence[str],
    path: Path, title: str,
) -> Path:
    """One panel per metric, each run's curve in its own color (same color in every panel)."""
    fig, axes = _figure(title, len(metrics))
    for ax, metric in zip(axes, metrics, strict=False):
        for i, (name, run_series) in enumerate(zip(names, series, strict=True)):
            points = [(s, v) for s, v in run_series.get(metric, []) if v == v]
            if points:
                _plot(ax, points, safe_title(name, 80), color=f"C{i % 10}", linewidth=1.2)
        ax.set_title(safe_title(metric))
        _finish(ax, safe_title(metric), log=metric.endswith("loss")
                and _positive(s.get(metric, []) for s in series))
    return _save(fig, path)


def write_html(path: Path, png: Path, runs: Sequence[Any], names: Sequence[str]) -> Path:
    """A self-contained page: the overlay (embedded) and one table row per run."""
    e = html.escape
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    rows = []
    for run, name in zip(runs, names, strict=True):
        result = run.result or {}
        final = result.get("final_metrics") or {}
        metric = result.get("metric")
        value = final.get(metric) if isinstance(final, dict) and metric else None
        cells = [name, run.workload, run.status, metric or "", "" if value is None else
                 f"{value:.4g}", result.get("steps_to_target") or ""]
        rows.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{e(c)}</th>" for c in
                   ("run", "workload", "status", "metric", "final", "steps to target"))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>wdlab compare'
        "</title><style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;"
        "text-align:left}img{max-width:100%}</style></head><body>\n<h1>wdlab compare</h1>\n"
        f'<img alt="curves" src="data:image/png;base64,{data}">\n'
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>\n"
        "</body></html>\n"
    )
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path
