"""Helpers the weight-decay optimum claims share: λ* per seed and its slope across arms."""

from __future__ import annotations

from pathlib import Path

from wdlab.claims import stats
from wdlab.claims.base import ClaimData, final
from wdlab.claims.plots import line_plot

EPOCHS = 10
FIXED = ("train.stop_at_target=false", "optimizer.lr=0.01")
WDS = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]


def optimal_wd(data: ClaimData, key: str) -> dict[int, float]:
    grids = data.grid(key, "optimizer.weight_decay", final("val_mse"))
    return {s: stats.log_optimum(list(g), list(g.values())) for s, g in grids.items()}


def draw_optima(rows: list[list], sizes: list[float], what: str):
    def draw(files: Path) -> list[Path]:
        lines = [(f"seed {row[0]}", sizes, row[1:-1]) for row in rows]
        return [line_plot(files / "optimal_wd.png", f"optimal λ against {what}", what,
                          "optimal weight decay λ*", lines, logy=True)]

    return draw


def slopes_across(data: ClaimData, keys: dict[str, float]) -> tuple[dict[int, float], list[list]]:
    """Per seed, the slope of log λ* on log x over the arms (x: each arm's size)."""
    best = {key: optimal_wd(data, key) for key in keys}
    seeds = sorted(set.intersection(*(set(b) for b in best.values())))
    slopes, rows = {}, []
    for s in seeds:
        xs = [keys[k] for k in keys]
        ys = [best[k][s] for k in keys]
        slopes[s] = stats.log_slope(xs, ys)
        rows.append([s, *ys, slopes[s]])
    return slopes, rows


