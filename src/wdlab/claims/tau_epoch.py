"""The optimal τ_epoch = B/(ηλN) is constant across dataset sizes (Wang & Aitchison 2024)."""

from __future__ import annotations

from wdlab.claims import stats
from wdlab.claims._optimum import EPOCHS, FIXED, WDS, draw_optima, slopes_across
from wdlab.claims.base import Arm, Claim, ClaimData, Evidence


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
        slopes, rows = slopes_across(data, keys)
        seeds = sorted(slopes)
        test = stats.one_sample([slopes[s] for s in seeds], -0.5, "less",
                                "slope of log λ* on log N")  # fmt: skip
        tau = []
        for row in rows:
            taus = [32 / (1e-2 * w * n) for w, n in zip(row[1:-1], keys.values(), strict=True)]
            tau.append(", ".join(f"{t:.3g}" for t in taus))
        return Evidence.from_tests(
            [test], plots=[draw_optima(rows, list(keys.values()), "dataset size N")],
            columns=["seed", *[f"λ* (N={int(n)})" for n in keys.values()], "slope"],
            rows=rows,
            notes=["τ_epoch* per seed (B/(ηλ*N), η = 0.01): " + "; ".join(tau),
                   "AdamW, lr 0.01 (the teacher recipe's), cosine schedule with 50 warm-up "
                   "steps, batch 32."],
        )  # fmt: skip
