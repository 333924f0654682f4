"""AdamP and SGDP slow the norm growth of scale-invariant weights (Heo et al. 2021)."""

from __future__ import annotations

import math

from wdlab.claims import stats
from wdlab.claims.base import Arm, Claim, ClaimData, Evidence, Trial, paired_values

NORM = "mon/w_norm/role:si"
EFF_LR = "mon/eff_lr/role:si"
FIXED = ("train.stop_at_target=false", "optimizer.weight_decay=0.0", "schedule.kind=constant")


class AdamPNormGrowth(Claim):
    name = "adamp-norm-growth"
    title = "AdamP/SGDP slow the norm growth of scale-invariant weights"
    source = (
        "Heo et al. 2021, 'AdamP: Slowing Down the Slowdown for Momentum Optimizers on "
        "Scale-invariant Weights' (ICLR)"
    )
    statement = (
        "On scale-invariant weights (here the Linear layers in front of BatchNorm), momentum "
        "makes Adam and SGD grow the weight norm quickly, which decays the effective step "
        "size η/‖w‖²; projecting out the radial part of the update (AdamP, SGDP) slows that "
        "growth."
    )
    statistic = (
        "norm growth: the scale-invariant weights' norm at the end over its value at the "
        "first monitor probe (step 10), mean over those tensors (mon/w_norm/role:si), "
        "without weight decay"
    )
    test = (
        "paired t-tests over seeds, one-sided: growth(AdamW) − growth(AdamP) > 0 and "
        "growth(SGDW) − growth(SGDP) > 0; Holm over the two"
    )

    def arms(self, quick: bool = False) -> list[Arm]:
        steps, tiny = ("steps=30", True) if quick else ("steps=400", False)
        return [
            Arm("adam", "digits", (steps, *FIXED, "optimizer.lr=0.003"),
                {"optimizer.name": ["adamw", "adamp"]}, 3, tiny),
            Arm("sgd", "digits", (steps, *FIXED, "optimizer.name=sgdw", "optimizer.lr=0.1",
                                  "optimizer.momentum=0.9"),
                {"optimizer.name": ["sgdw", "sgdp"]}, 3, tiny),
        ]  # fmt: skip

    def analyse(self, data: ClaimData) -> Evidence:
        def growth(name: str):
            def value(t: Trial) -> float:
                series = data.series(t, name)
                if len(series) < 2 or series[0][1] == 0:
                    return math.nan
                return series[-1][1] / series[0][1]

            return value

        def eff_lr_change(t: Trial) -> float:
            """(η/‖w‖²) at the end over its value at the first probe, the schedule's own
            change of η divided out (the recipe's warm-up is still on at the first probe)."""
            series, lr = data.series(t, EFF_LR), dict(data.series(t, "lr"))
            if len(series) < 2 or series[0][1] == 0:
                return math.nan
            (s0, e0), (s1, e1) = series[0], series[-1]
            if not lr.get(s0) or not lr.get(s1):
                return math.nan
            return (e1 / e0) / (lr[s1] / lr[s0])

        tests, rows = [], []
        for arm, base, projected in (("adam", "adamw", "adamp"), ("sgd", "sgdw", "sgdp")):
            g_base = data.by_seed(arm, growth(NORM), {"optimizer.name": base})
            g_proj = data.by_seed(arm, growth(NORM), {"optimizer.name": projected})
            e_base = data.by_seed(arm, eff_lr_change, {"optimizer.name": base})
            e_proj = data.by_seed(arm, eff_lr_change, {"optimizer.name": projected})
            a, b = paired_values(g_base, g_proj)
            tests.append(stats.paired(a, b, "greater", f"norm growth: {base} vs {projected}"))
            for s in sorted(set(g_base) & set(g_proj)):
                rows.append([s, f"{base} / {projected}", g_base[s], g_proj[s],
                             e_base.get(s), e_proj.get(s)])  # fmt: skip
        return Evidence.from_tests(
            tests,
            columns=["seed", "pair", "norm growth (base)", "norm growth (projected)",
                     "eff-lr ratio (base)", "eff-lr ratio (projected)"],
            rows=rows,
            notes=["eff-lr ratio = (η/‖w‖²) at the end over its value at the first probe, "
                   "with the schedule's own change of η divided out (the recipe's 20 warm-up "
                   "steps are still on at the first probe): below 1 is the effective-step "
                   "decay the claim says AdamP and SGDP slow."],
        )  # fmt: skip
