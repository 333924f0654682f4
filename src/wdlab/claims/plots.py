"""Claim-specific plots: lines of (x, y) points, one colour per label (matplotlib, Agg)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from wdlab.report import _colors, _save, safe_title

Line = tuple[str, Sequence[float], Sequence[float]]


def line_plot(
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    lines: Sequence[Line],
    *,
    logx: bool = True,
    logy: bool = False,
    hline: float | None = None,
) -> Path:
    """`lines` as (label, xs, ys); non-finite points are left out. `hline` draws a dotted
    reference (a bound, a prediction)."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    colors = _colors(label for label, _, _ in lines)
    seen: set[str] = set()
    for label, xs, ys in lines:
        pts = sorted((x, y) for x, y in zip(xs, ys, strict=True)
                     if math.isfinite(x) and math.isfinite(y) and (not logy or y > 0))
        if not pts:
            continue
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", markersize=3,
                color=colors[label], label=safe_title(label, 60) if label not in seen else None)
        seen.add(label)
    if hline is not None:
        ax.axhline(hline, color="0.4", linestyle=":")
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(safe_title(xlabel, 60))
    ax.set_ylabel(safe_title(ylabel, 60))
    ax.set_title(safe_title(title))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))
