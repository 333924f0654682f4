"""Decoupled weight decay makes the best λ independent of the best η (Loshchilov & Hutter)."""

from __future__ import annotations

import math
from pathlib import Path

from wdlab.claims import stats
from wdlab.claims.base import Arm, Claim, ClaimData, Evidence, final, paired_values
from wdlab.claims.plots import line_plot

FIXED = ("train.stop_at_target=false",)
LRS = [3e-4, 1e-3, 3e-3, 1e-2]
# Per-step shrink λ·s_t for "independent" (the paper's AdamW: decay scaled by the schedule
# only); the L2 coefficient acts through Adam's normalization, so its useful range is wider.
WD_INDEPENDENT = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
WD_L2 = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]


class DecoupledRidge(Claim):
    name = "decoupled-wd-ridge"
    title = "Decoupled decay separates the best λ from the best η; L2 couples them"
    source = (
        "Loshchilov & Hutter 2019, 'Decoupled Weight Decay Regularization' (Fig. 2: the "
        "LR × WD heatmaps of Adam with L2 and AdamW)"
    )
    statement = (
        "With decay decoupled from the learning rate (AdamW as the paper defines it: the "
        "shrink follows the schedule multiplier, not α), the optimal λ stays put as η "
        "changes; with L2 regularization in Adam the optimal λ moves with η (a diagonal "
        "ridge in the heatmap)."
    )
    statistic = (
        "per seed, the optimal λ at each η (argmin of final val_loss over the λ grid, refined "
        "by a parabola in log λ), then |slope| of log λ* against log η"
    )
    test = "paired t-test over seeds, one-sided: |slope(L2)| − |slope(independent)| > 0"

    def arms(self, quick: bool = False) -> list[Arm]:
        if quick:
            settings, lrs, seeds = ("steps=30", *FIXED), [1e-3, 1e-2], 3
            ind, l2 = WD_INDEPENDENT[::2], WD_L2[1::2]
            tiny = True
        else:
            settings, lrs, seeds, ind, l2, tiny = ("steps=400", *FIXED), LRS, 3, \
                WD_INDEPENDENT, WD_L2, False  # fmt: skip
        return [
            Arm("independent", "digits", (*settings, "optimizer.decay=independent"),
                {"optimizer.lr": lrs, "optimizer.weight_decay": ind}, seeds, tiny),
            Arm("l2", "digits", (*settings, "optimizer.decay=l2"),
                {"optimizer.lr": lrs, "optimizer.weight_decay": l2}, seeds, tiny),
        ]  # fmt: skip

    def _slopes(self, data: ClaimData, key: str) -> tuple[dict[int, float], dict]:
        loss = final("val_loss")
        lrs = sorted({t.params["optimizer.lr"] for t in data.arm(key)})
        best: dict[int, dict[float, float]] = {}
        for lr in lrs:
            for seed, by_wd in data.grid(key, "optimizer.weight_decay", loss,
                                         {"optimizer.lr": lr}).items():  # fmt: skip
                best.setdefault(seed, {})[lr] = stats.log_optimum(list(by_wd), list(by_wd.values()))
        slopes = {s: abs(stats.log_slope(list(b), list(b.values()))) for s, b in best.items()}
        return slopes, best

    def analyse(self, data: ClaimData) -> Evidence:
        ind, best_ind = self._slopes(data, "independent")
        l2, best_l2 = self._slopes(data, "l2")
        a, b = paired_values(l2, ind)
        test = stats.paired(a, b, "greater", "|slope of log λ* on log η|: L2 vs independent")
        rows = []
        for s in sorted(set(ind) & set(l2)):
            fmt = lambda d: ", ".join(f"{lr:g}→{w:.3g}" for lr, w in sorted(d.items()))  # noqa: E731
            rows.append([s, l2[s], ind[s], fmt(best_l2[s]), fmt(best_ind[s])])
        notes = []
        if any(math.isnan(v) for v in list(ind.values()) + list(l2.values())):
            notes.append("A NaN slope: every λ at some η diverged or failed for that seed.")
        notes.append(
            "torch's decoupled form (w ← w·(1 − ηλ)) couples λ to η by design (the shrink is "
            "ηλ); the paper's decoupling is wdlab's decay=\"independent\" (shrink λ·s_t)."
        )
        def draw(files: Path) -> list[Path]:
            lines = [(f"{arm} (seed {s})", list(b), list(b.values()))
                     for arm, best in (("L2", best_l2), ("independent", best_ind))
                     for s, b in sorted(best.items())]  # fmt: skip
            return [line_plot(files / "optimal_wd.png", "optimal λ against η",
                              "learning rate η", "optimal weight decay λ*", lines,
                              logy=True)]  # fmt: skip

        return Evidence.from_tests(
            [test], plots=[draw],
            columns=["seed", "|slope| L2", "|slope| independent", "λ*(η) L2",
                     "λ*(η) independent"],
            rows=rows, notes=notes,
        )  # fmt: skip
