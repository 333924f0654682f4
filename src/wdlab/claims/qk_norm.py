"""qk-layernorm and z-loss lower LR sensitivity and stop logit growth (Wortsman et al. 2023)."""

from __future__ import annotations

import math
from pathlib import Path

from wdlab import scoring
from wdlab.claims import stats
from wdlab.claims._charlm import SMALL, first_loss, series_max
from wdlab.claims.base import Arm, Claim, ClaimData, Evidence, final, mean, paired_values
from wdlab.claims.plots import line_plot

LRS = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
FIXED = ("train.stop_at_target=false", "schedule.warmup=10", "train.clip=1.0")


class QkNormZLoss(Claim):
    name = "qk-norm-z-loss"
    title = "qk-layernorm and z-loss lower LR sensitivity and stop logit growth at high LR"
    source = (
        "Wortsman et al. 2023, 'Small-scale proxies for large-scale Transformer training "
        "instabilities' (ICLR 2024)"
    )
    statement = (
        "At high learning rates small transformers show the instabilities of large ones: "
        "attention logits grow (fixed by qk-layernorm) and output logits diverge (fixed by "
        "the z-loss 1e-4·log²Z); with the fixes the final loss depends less on the "
        "learning rate (lower LR sensitivity)."
    )
    statistic = (
        "per seed: LR sensitivity (mean over the lr grid of min(ℓ(η), ℓ0) − ℓ*, final "
        "val_loss, diverged = ℓ0); at the top lr, the largest attention logit and the "
        "largest log Z the monitor saw"
    )
    test = (
        "paired t-tests over seeds, one-sided: sensitivity(qk-norm) < sensitivity(base), "
        "sensitivity(z-loss) < sensitivity(base), max attention logit(qk-norm) < base, "
        "max log Z(z-loss) < base; Holm over the four"
    )

    def arms(self, quick: bool = False) -> list[Arm]:
        if quick:
            common, lrs, tiny = ("steps=20", *FIXED), [1e-2, 1e-1], True
        else:
            common, lrs, tiny = ("steps=300", *FIXED, *SMALL), LRS, False
        variants = {"base": (), "qk-norm": ("model.qk_norm=true",),
                    "z-loss": ("model.z_loss=0.0001",)}
        return [Arm(key, "charlm", (*common, *extra), {"optimizer.lr": lrs}, 3, tiny)
                for key, extra in variants.items()]

    def _sensitivity(self, data: ClaimData, key: str) -> dict[int, float]:
        grids = data.grid(key, "optimizer.lr", final("val_loss"))
        l0 = {t.seed: first_loss(data, t) for t in data.arm(key)}
        out = {}
        for seed, by_lr in grids.items():
            lrs = sorted(by_lr)
            try:
                out[seed] = scoring.lr_sensitivity(lrs, [by_lr[x] for x in lrs], l0[seed],
                                                   (min(lrs), max(lrs)))  # fmt: skip
            except ValueError:
                out[seed] = math.nan
        return out

    def _at_top(self, data: ClaimData, key: str, prefix: str) -> dict[int, float]:
        top = max(t.params["optimizer.lr"] for t in data.arm(key))
        return data.by_seed(key, lambda t: series_max(data, t, prefix),
                            {"optimizer.lr": top}, diverged=True)  # fmt: skip

    def analyse(self, data: ClaimData) -> Evidence:
        sens = {k: self._sensitivity(data, k) for k in ("base", "qk-norm", "z-loss")}
        attn = {k: self._at_top(data, k, "mon/attn_max_logit/layer:") for k in ("base", "qk-norm")}
        logz = {k: self._at_top(data, k, "mon/logz_max") for k in ("base", "z-loss")}
        tests = []
        for variant in ("qk-norm", "z-loss"):
            a, b = paired_values(sens[variant], sens["base"])
            tests.append(stats.paired(a, b, "less", f"LR sensitivity: {variant} vs base"))
        a, b = paired_values(attn["qk-norm"], attn["base"])
        tests.append(stats.paired(a, b, "less", "max attention logit at the top lr: qk-norm vs "
                                                "base"))  # fmt: skip
        a, b = paired_values(logz["z-loss"], logz["base"])
        tests.append(stats.paired(a, b, "less", "max log Z at the top lr: z-loss vs base"))
        seeds = sorted(sens["base"])

        def get(d: dict[int, float], s: int) -> float | None:
            return d.get(s)

        rows = [[s, get(sens["base"], s), get(sens["qk-norm"], s), get(sens["z-loss"], s),
                 get(attn["base"], s), get(attn["qk-norm"], s), get(logz["base"], s),
                 get(logz["z-loss"], s)] for s in seeds]  # fmt: skip
        def draw(files: Path) -> list[Path]:
            lines = []
            for key in ("base", "qk-norm", "z-loss"):
                grids = data.grid(key, "optimizer.lr", final("val_loss"))
                lrs = sorted({lr for g in grids.values() for lr in g})
                lines.append((key, lrs, [mean(g.get(lr, math.nan) for g in grids.values())
                                         for lr in lrs]))  # fmt: skip
            return [line_plot(files / "lr_sensitivity.png", "final val_loss against lr (mean "
                              "over seeds; diverged runs left out)", "learning rate",
                              "final val_loss", lines)]  # fmt: skip

        return Evidence.from_tests(
            tests, plots=[draw],
            columns=["seed", "S base", "S qk-norm", "S z-loss", "attn logit base",
                     "attn logit qk-norm", "log Z base", "log Z z-loss"],
            rows=rows,
            notes=["S: LR sensitivity (lower is more robust); logits are maxima over the "
                   "run at the top lr, diverged runs included up to their last finite probe."],
        )  # fmt: skip
