"""μP with independent weight decay transfers the LR across width better than with lr-coupled
decay, increasingly so as training lengthens (Kosson et al. 2025)."""

from __future__ import annotations

import math

from wdlab.claims import stats
from wdlab.claims.base import Arm, Claim, ClaimData, Evidence, final, paired_values

LRS = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
WIDTHS = [64, 512]
# The same per-step shrink at the base width and lr 1e-2: ηλ = 1e-2·0.1 = 1e-3.
DECAYS = {"decoupled": 0.1, "independent": 1e-3}
FIXED = ("train.stop_at_target=false", "optimizer.scaling=mup", "optimizer.base_width=64")


class MupIndependentWd(Claim):
    name = "mup-independent-wd"
    title = "μP with independent decay transfers the LR across width better as training lengthens"
    source = (
        "Kosson, Welborn, Liu, Jaggi, Chen 2025, 'Weight decay may matter more than μP for "
        "learning rate transfer in practice'"
    )
    statement = (
        "μP divides the hidden matrices' lr by the width multiplier m; with decay coupled to "
        "the lr (torch's ηλ) that also divides the per-step shrink by m, so wide models reach "
        "a different equilibrium and the optimal lr drifts with width once training is long "
        "enough for equilibrium to matter. With independent decay (shrink λ, not ηλ) the "
        "optimal lr transfers."
    )
    statistic = (
        "per seed, the transfer error |log2(η*(width 512) / η*(width 64))| (η*: argmin of "
        "final val_mse over the lr grid, parabola-refined), teacher with μP at base width 64, "
        "for a short (300) and a long (2400 step) run"
    )
    test = (
        "paired t-tests over seeds, one-sided: error(coupled) − error(independent) > 0 at the "
        "long length, and that difference larger at the long than at the short length; Holm "
        "over the two"
    )

    def arms(self, quick: bool = False) -> list[Arm]:
        lengths = {"short": 10, "long": 20} if quick else {"short": 300, "long": 2400}
        lrs = [1e-2, 1e-1] if quick else LRS
        widths = [16, 32] if quick else WIDTHS
        fixed = tuple(x.replace("base_width=64", f"base_width={widths[0]}") for x in FIXED)
        return [Arm(f"{decay}-{length}", "teacher",
                    (f"steps={steps}", *fixed, f"optimizer.decay={decay}",
                     f"optimizer.weight_decay={wd}"),
                    {"model.width": widths, "optimizer.lr": lrs}, 3, quick)
                for length, steps in lengths.items() for decay, wd in DECAYS.items()]

    def _errors(self, data: ClaimData, key: str) -> dict[int, float]:
        widths = sorted({t.params["model.width"] for t in data.arm(key)})
        best = {}
        for w in widths:
            for seed, by_lr in data.grid(key, "optimizer.lr", final("val_mse"),
                                         {"model.width": w}).items():  # fmt: skip
                best.setdefault(seed, {})[w] = stats.log_optimum(list(by_lr), list(by_lr.values()))
        return {s: abs(math.log2(b[widths[-1]] / b[widths[0]])) for s, b in best.items()
                if len(b) == len(widths)}  # fmt: skip

    def analyse(self, data: ClaimData) -> Evidence:
        err = {key: self._errors(data, key) for key in data.trials}
        gap = {}
        for length in ("short", "long"):
            c, i = err[f"decoupled-{length}"], err[f"independent-{length}"]
            gap[length] = {s: c[s] - i[s] for s in set(c) & set(i)}
        seeds = sorted(gap["long"])
        tests = [stats.paired([gap["long"][s] for s in seeds], [0.0] * len(seeds), "greater",
                              "transfer error at the long length: coupled vs independent")]
        a, b = paired_values(gap["long"], gap["short"])
        tests.append(stats.paired(a, b, "greater", "that gap: long vs short"))
        rows = [[s, *(err[f"{d}-{n}"].get(s) for n in ("short", "long") for d in DECAYS)]
                for s in seeds]  # fmt: skip
        return Evidence.from_tests(
            tests,
            columns=["seed", "err coupled short", "err independent short", "err coupled long",
                     "err independent long"],
            rows=rows,
            notes=["Errors in octaves of lr (log2); 0 means the optimal lr transferred."],
        )  # fmt: skip
