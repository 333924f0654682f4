"""The optimal weight decay grows with the batch size (Bergsma et al. 2025, "Power Lines")."""

from __future__ import annotations

import math

from wdlab.claims import stats
from wdlab.claims._optimum import EPOCHS, FIXED, WDS, draw_optima, slopes_across
from wdlab.claims.base import Arm, Claim, ClaimData, Evidence


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
        slopes, rows = slopes_across(data, keys)
        seeds = sorted(slopes)
        test = stats.one_sample([slopes[s] for s in seeds], 0.0, "greater",
                                "slope of log λ* on log B")  # fmt: skip
        notes = []
        if any(math.isnan(v) for v in slopes.values()):
            notes.append("A NaN slope: no λ of some batch size finished for that seed.")
        return Evidence.from_tests(
            [test], plots=[draw_optima(rows, list(keys.values()), "batch size B")],
            columns=["seed", *[f"λ* (B={int(b)})" for b in keys.values()], "slope"],
            rows=rows, notes=notes,
        )  # fmt: skip
