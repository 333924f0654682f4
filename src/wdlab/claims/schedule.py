"""Linear decay to zero beats cosine to 10%, more so the longer the run (Bergsma et al. 2025)."""

from __future__ import annotations

from wdlab.claims import stats
from wdlab.claims._charlm import SMALL
from wdlab.claims.base import Arm, Claim, ClaimData, Evidence, final, paired_values

FIXED = ("train.stop_at_target=false", "schedule.warmup=30")
SCHEDULES = {
    "linear0": ("schedule.kind=linear", "schedule.final_lr_fraction=0.0"),
    "cosine10": ("schedule.kind=cosine", "schedule.final_lr_fraction=0.1"),
}


class LinearToZero(Claim):
    name = "linear-to-zero"
    title = "Linear decay to zero beats cosine to 10%, and the gap grows with length"
    source = (
        "Bergsma et al. 2025, 'Straight to Zero: Why Linearly Decaying the Learning Rate to "
        "Zero Works Best for LLMs' (ICLR)"
    )
    statement = (
        "At the same peak learning rate, decaying it linearly to zero ends at a lower loss "
        "than the common cosine to 10% of the peak, and the advantage grows with the number "
        "of training tokens per parameter (longer runs)."
    )
    statistic = (
        "per seed, gap = final val_loss(cosine to 10%) − final val_loss(linear to 0) at a "
        "short and a 4x longer run (charlm, 2 layers, width 64, lr 1e-2)"
    )
    test = (
        "paired t-tests over seeds, one-sided: gap(long) > 0 and gap(long) − gap(short) > 0; "
        "Holm over the two"
    )

    def arms(self, quick: bool = False) -> list[Arm]:
        lengths = {"short": 10, "long": 20} if quick else {"short": 300, "long": 1200}
        extra = () if quick else SMALL
        return [Arm(f"{sched}-{length}", "charlm",
                    (f"steps={steps}", *FIXED, *extra, *SCHEDULES[sched]), {}, 3, quick)
                for length, steps in lengths.items() for sched in SCHEDULES]  # fmt: skip

    def analyse(self, data: ClaimData) -> Evidence:
        loss = final("val_loss")
        gap = {}
        for length in ("short", "long"):
            cos = data.by_seed(f"cosine10-{length}", loss)
            lin = data.by_seed(f"linear0-{length}", loss)
            gap[length] = {s: cos[s] - lin[s] for s in set(cos) & set(lin)}
        a, zero = list(gap["long"].values()), [0.0] * len(gap["long"])
        seeds = sorted(gap["long"])
        tests = [stats.paired([gap["long"][s] for s in seeds], zero, "greater",
                              "gap at the long length (cosine10 − linear0)")]  # fmt: skip
        a, b = paired_values(gap["long"], gap["short"])
        tests.append(stats.paired(a, b, "greater", "gap(long) − gap(short)"))
        rows = [[s, gap["short"].get(s), gap["long"].get(s)] for s in seeds]
        return Evidence.from_tests(tests, columns=["seed", "gap short", "gap long"], rows=rows)
