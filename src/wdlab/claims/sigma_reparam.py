"""σReparam prevents attention-entropy collapse at high learning rate (Zhai et al. 2023)."""

from __future__ import annotations

import math

from wdlab.claims import stats
from wdlab.claims._charlm import SMALL
from wdlab.claims.base import Arm, Claim, ClaimData, Evidence, Trial, paired_values

PREFIX = "mon/attn_entropy/layer:"
FIXED = ("train.stop_at_target=false", "schedule.warmup=0", "train.clip=1.0")


class SigmaReparamEntropy(Claim):
    name = "sigma-reparam-entropy"
    title = "σReparam prevents attention-entropy collapse at high LR"
    source = (
        "Zhai et al. 2023, 'Stabilizing Transformer Training by Preventing Attention Entropy "
        "Collapse' (ICML)"
    )
    statement = (
        "At a high learning rate without warm-up, attention entropy collapses (attention "
        "concentrates on one key) and training becomes unstable; reparametrizing every "
        "linear layer as W·γ/σ(W) (σReparam) keeps the entropy up."
    )
    statistic = (
        "per seed, at the highest lr: the lowest attention entropy over layers at the end "
        "of training (the last monitor probe; nats, mean over heads)"
    )
    test = "paired t-test over seeds, one-sided: entropy(σReparam) − entropy(base) > 0"

    def arms(self, quick: bool = False) -> list[Arm]:
        if quick:
            common, lrs, tiny = ("steps=20", *FIXED), [3e-2], True
        else:
            common, lrs, tiny = ("steps=300", *FIXED, *SMALL), [1e-2, 3e-2], False
        return [Arm(key, "charlm", (*common, *extra), {"optimizer.lr": lrs}, 3, tiny)
                for key, extra in (("base", ()), ("sigma-reparam",
                                                  ("model.sigma_reparam=true",)))]

    def analyse(self, data: ClaimData) -> Evidence:
        def final_entropy(t: Trial) -> float:
            ends = []
            for name in data.names(t, PREFIX):
                if "/head:" in name:
                    continue
                finite = [v for _, v in data.series(t, name) if math.isfinite(v)]
                if finite:
                    ends.append(finite[-1])
            return min(ends) if ends else math.nan

        top = max(t.params["optimizer.lr"] for t in data.arm("base"))
        where = {"optimizer.lr": top}
        base = data.by_seed("base", final_entropy, where, diverged=True)
        sigma = data.by_seed("sigma-reparam", final_entropy, where, diverged=True)
        a, b = paired_values(sigma, base)
        test = stats.paired(a, b, "greater", f"final min attention entropy at lr {top:g}: "
                                             "σReparam vs base")  # fmt: skip
        seeds = sorted(set(base) & set(sigma))
        return Evidence.from_tests(
            [test], columns=["seed", "entropy base", "entropy σReparam"],
            rows=[[s, base[s], sigma[s]] for s in seeds],
            notes=["A diverged run's entropy is its last finite probe."],
        )  # fmt: skip
