"""More weight decay raises the loss on rare tokens first (Pinto et al. 2024)."""

from __future__ import annotations

import math

from wdlab.claims import stats
from wdlab.claims._charlm import SMALL
from wdlab.claims.base import (
    Arm,
    Claim,
    ClaimData,
    Evidence,
    Feature,
    config_accepts,
    final,
    paired_values,
)

BUCKETS = 4
FIXED = ("train.stop_at_target=false", f"data.frequency_buckets={BUCKETS}")
WDS = [0.0, 0.3, 1.0]


class RareTokensFirst(Claim):
    name = "wd-rare-tokens-first"
    title = "More weight decay raises the loss on rare tokens first"
    source = (
        "Pinto, Rabinovich et al. 2024, 'The Fair Language Model Paradox' (weight decay and "
        "low-frequency tokens)"
    )
    statement = (
        "As weight decay grows, the loss on low-frequency tokens degrades before (and more "
        "than) the loss on high-frequency tokens, which dominate the average loss and hide "
        "the effect."
    )
    statistic = (
        f"per seed, the relative change of the validation loss of each frequency bucket "
        f"({BUCKETS} buckets holding equal shares of the training characters) from wd 0 to "
        "wd λ: rare (last bucket) minus frequent (first bucket), for each λ > 0"
    )
    test = (
        "paired t-tests over seeds, one-sided: Δrare − Δfrequent > 0 at each λ > 0; Holm "
        "over the λs"
    )
    needs = (Feature("per-frequency-bucket validation loss in charlm "
                     "(data.frequency_buckets)",
                     config_accepts("charlm", "data.frequency_buckets=4")),)  # fmt: skip

    def arms(self, quick: bool = False) -> list[Arm]:
        if quick:
            common, tiny, wds = ("steps=20", *FIXED), True, [0.0, 1.0]
        else:
            common, tiny, wds = ("steps=600", *FIXED, *SMALL), False, WDS
        return [Arm("wd", "charlm", common, {"optimizer.weight_decay": wds}, 3, tiny)]

    def analyse(self, data: ClaimData) -> Evidence:
        wds = sorted({t.params["optimizer.weight_decay"] for t in data.arm("wd")})
        frequent, rare = "val_loss_freq0", f"val_loss_freq{BUCKETS - 1}"
        base_f = data.by_seed("wd", final(frequent), {"optimizer.weight_decay": wds[0]})
        base_r = data.by_seed("wd", final(rare), {"optimizer.weight_decay": wds[0]})
        tests, rows = [], []
        for wd in wds[1:]:
            f = data.by_seed("wd", final(frequent), {"optimizer.weight_decay": wd})
            r = data.by_seed("wd", final(rare), {"optimizer.weight_decay": wd})
            d_rare = {s: r[s] / base_r[s] - 1 for s in set(r) & set(base_r)}
            d_freq = {s: f[s] / base_f[s] - 1 for s in set(f) & set(base_f)}
            a, b = paired_values(d_rare, d_freq)
            tests.append(stats.paired(a, b, "greater", f"Δrare − Δfrequent at wd {wd:g}"))
            for s in sorted(set(d_rare) & set(d_freq)):
                rows.append([s, wd, d_freq[s], d_rare[s]])
        notes = []
        if any(math.isnan(v) for v in list(base_f.values()) + list(base_r.values())):
            notes.append("Missing bucket losses: the runs did not log val_loss_freq*.")
        return Evidence.from_tests(
            tests, columns=["seed", "wd", "Δ frequent (relative)", "Δ rare (relative)"],
            rows=rows, notes=notes,
        )  # fmt: skip
