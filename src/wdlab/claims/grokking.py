"""Weight decay is what makes grokking happen (Power et al. 2022; Nanda et al. 2023)."""

from __future__ import annotations

from wdlab.claims import stats
from wdlab.claims.base import Arm, Claim, ClaimData, Evidence, final, paired_values

FIXED = ("train.stop_at_target=false",)


class GrokkingNeedsWd(Claim):
    name = "grokking-needs-wd"
    title = "Weight decay makes grokking happen"
    source = (
        "Power et al. 2022, 'Grokking: Generalization Beyond Overfitting on Small Algorithmic "
        "Datasets'; Nanda et al. 2023, 'Progress Measures for Grokking via Mechanistic "
        "Interpretability'"
    )
    statement = (
        "On modular addition with half of all pairs for training, AdamW with weight decay "
        "first memorizes and later generalizes (validation accuracy near 1); the same run "
        "without weight decay memorizes and stays there."
    )
    statistic = "final validation accuracy per seed, with wd = 1.0 and with wd = 0"
    test = "paired t-test over seeds (same init and split), one-sided: acc(wd) − acc(no wd) > 0"

    def arms(self, quick: bool = False) -> list[Arm]:
        if quick:
            return [Arm("wd", "grokking", ("steps=40", *FIXED),
                        {"optimizer.weight_decay": [2.0, 0.0]}, seeds=3, tiny=True)]
        # The workload's calibrated recipe (p = 97, MLP 128/512, AdamW lr 1e-3, betas
        # (0.9, 0.98), constant after 100 warm-up steps): groks near step 2,200 at wd 1.0.
        return [Arm("wd", "grokking", ("steps=3000", *FIXED),
                    {"optimizer.weight_decay": [1.0, 0.0]}, seeds=3)]

    def analyse(self, data: ClaimData) -> Evidence:
        wds = sorted({t.params["optimizer.weight_decay"] for t in data.arm("wd")})
        hi, lo = max(wds), min(wds)
        acc = final("val_accuracy")
        with_wd = data.by_seed("wd", acc, {"optimizer.weight_decay": hi})
        without = data.by_seed("wd", acc, {"optimizer.weight_decay": lo})
        train = data.by_seed("wd", final("train_accuracy"), {"optimizer.weight_decay": lo})
        a, b = paired_values(with_wd, without)
        test = stats.paired(a, b, "greater", f"val accuracy: wd {hi:g} vs wd {lo:g}")
        seeds = sorted(set(with_wd) & set(without))
        rows = [[s, with_wd[s], without[s], train.get(s)] for s in seeds]
        return Evidence.from_tests(
            [test],
            columns=["seed", f"val acc (wd {hi:g})", f"val acc (wd {lo:g})",
                     f"train acc (wd {lo:g})"],
            rows=rows,
            notes=["Train accuracy without decay shows the memorization the claim contrasts."],
        )  # fmt: skip
