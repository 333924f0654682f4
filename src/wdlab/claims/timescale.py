"""The AdamW timescale: the optimal τ_epoch = B/(ηλN) is constant across dataset sizes (Wang &
Aitchison 2024), and the optimal λ grows with the batch size (Bergsma et al. 2025)."""

from __future__ import annotations

import math
from pathlib import Path

from wdlab.claims import stats
from wdlab.claims.base import Arm, Claim, ClaimData, Evidence, final
from wdlab.claims.plots import line_plot

EPOCHS = 10
FIXED = ("train.stop_at_target=false", "optimizer.lr=0.01")
WDS = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]


def _optimal_wd(data: ClaimData, key: str) -> dict[int, float]:
    grids = data.grid(key, "optimizer.weight_decay", final("val_mse"))
    return {s: stats.log_optimum(list(g), list(g.values())) for s, g in grids.items()}


def _draw(rows: list[list], sizes: list[float], what: str):
    def draw(files: Path) -> list[Path]:
        lines = [(f"seed {row[0]}", sizes, row[1:-1]) for row in rows]
        return [line_plot(files / "optimal_wd.png", f"optimal λ against {what}", what,
                          "optimal weight decay λ*", lines, logy=True)]

    return draw


def _slopes(data: ClaimData, keys: dict[str, float]) -> tuple[dict[int, float], list[list]]:
    """Per seed, the slope of log λ* on log x over the arms (x: each arm's size)."""
    best = {key: _optimal_wd(data, key) for key in keys}
    seeds = sorted(set.intersection(*(set(b) for b in best.values())))
    slopes, rows = {}, []
    for s in seeds:
        xs = [keys[k] for k in keys]
        ys = [best[k][s] for k in keys]
        slopes[s] = stats.log_slope(xs, ys)
        rows.append([s, *ys, slopes[s]])
    return slopes, rows


class TauEpochDatasetSize(Claim):
    name = "tau-epoch-dataset-size"
    title = "The optimal τ_epoch = B/(ηλN) stays constant as the dataset grows"
    source = (
        "Wang & Aitchison 2024, 'How to set AdamW's weight decay as you scale model and "
        "dataset size'"
    )
    statement = (
        "AdamW's weights are an EMA over the last 1/(ηλ) updates; what should stay fixed "
        "across dataset sizes is that timescale in epochs, τ_epoch = B/(ηλN). So the optimal "
        "λ falls as 1/N at fixed η and B (slope −1 of log λ* on log N), not constant "
        "(slope 0)."
    )
    statistic = (
        "per seed, λ*(N) (argmin of final val_mse over the λ grid, refined by a parabola in "
        f"log λ) for N ∈ {{1024, 2048, 4096}} trained {EPOCHS} epochs each; the slope of "
        "log λ* on log N"
    )
    test = (
        "one-sample t-test over seeds, one-sided: mean slope < −0.5 (nearer the τ-constant "
        "−1 than the λ-constant 0)"
    )

    SIZES = (1024, 2048, 4096)

    def arms(self, quick: bool = False) -> list[Arm]:
        batch = 32
        if quick:
            return [Arm(f"n{n}", "teacher", (f"steps={max(n // batch, 10)}", *FIXED,
                                             f"data.n_train={n}", f"data.batch_size={batch}"),
                        {"optimizer.weight_decay": WDS[1::3]}, 3, True)
                    for n in (256, 512)]  # fmt: skip
        return [Arm(f"n{n}", "teacher", (f"steps={EPOCHS * n // batch}", *FIXED,
                                         f"data.n_train={n}", f"data.batch_size={batch}"),
                    {"optimizer.weight_decay": WDS}, 3)
                for n in self.SIZES]  # fmt: skip

    def analyse(self, data: ClaimData) -> Evidence:
        keys = {k: float(k[1:]) for k in data.trials}
        slopes, rows = _slopes(data, keys)
        seeds = sorted(slopes)
        test = stats.one_sample([slopes[s] for s in seeds], -0.5, "less",
                                "slope of log λ* on log N")  # fmt: skip
        tau = []
        for row in rows:
            taus = [32 / (1e-2 * w * n) for w, n in zip(row[1:-1], keys.values(), strict=True)]
            tau.append(", ".join(f"{t:.3g}" for t in taus))
        return Evidence.from_tests(
            [test], plots=[_draw(rows, list(keys.values()), "dataset size N")],
            columns=["seed", *[f"λ* (N={int(n)})" for n in keys.values()], "slope"],
            rows=rows,
            notes=["τ_epoch* per seed (B/(ηλ*N), η = 0.01): " + "; ".join(tau),
                   "AdamW, lr 0.01 (the teacher recipe's), cosine schedule with 50 warm-up "
                   "steps, batch 32."],
        )  # fmt: skip


class WdGrowsWithBatch(Claim):
    name = "wd-grows-with-batch"
    title = "The optimal weight decay grows with the batch size"
    source = (
        "Bergsma et al. 2025, 'Power Lines: Scaling Laws for Weight Decay and Batch Size in "
        "LLM Pre-Training'"
    )
    statement = (
        "At a fixed learning rate and a fixed number of epochs, the optimal λ increases with "
        "the batch size B (the optimal timescale τ = B/(ηλD) is what stays put, so λ* ∝ B)."
    )
    statistic = (
        "per seed, λ*(B) for B ∈ {16, 64, 256} over 10 epochs of 4096 examples (argmin of "
        "final val_mse, parabola-refined); the slope of log λ* on log B"
    )
    test = "one-sample t-test over seeds, one-sided: mean slope > 0"

    BATCHES = (16, 64, 256)

    def arms(self, quick: bool = False) -> list[Arm]:
        n = 4096
        if quick:
            return [Arm(f"b{b}", "teacher", ("steps=10", *FIXED, "data.n_train=512",
                                             f"data.batch_size={b}"),
                        {"optimizer.weight_decay": WDS[1::3]}, 3, True)
                    for b in (16, 64)]  # fmt: skip
        return [Arm(f"b{b}", "teacher", (f"steps={EPOCHS * n // b}", *FIXED,
                                         f"data.n_train={n}", f"data.batch_size={b}",
                                         "schedule.warmup=10"),
                    {"optimizer.weight_decay": WDS}, 3)
                for b in self.BATCHES]  # fmt: skip

    def analyse(self, data: ClaimData) -> Evidence:
        keys = {k: float(k[1:]) for k in data.trials}
        slopes, rows = _slopes(data, keys)
        seeds = sorted(slopes)
        test = stats.one_sample([slopes[s] for s in seeds], 0.0, "greater",
                                "slope of log λ* on log B")  # fmt: skip
        notes = []
        if any(math.isnan(v) for v in slopes.values()):
            notes.append("A NaN slope: no λ of some batch size finished for that seed.")
        return Evidence.from_tests(
            [test], plots=[_draw(rows, list(keys.values()), "batch size B")],
            columns=["seed", *[f"λ* (B={int(b)})" for b in keys.values()], "slope"],
            rows=rows, notes=notes,
        )  # fmt: skip
