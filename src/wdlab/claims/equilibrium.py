"""Rotational equilibrium (Kosson, Messmer, Jaggi 2024): the measured angular update of every
scale-invariant layer settles at the predicted value after ~1/(ηλ) steps."""

from __future__ import annotations

import math
from pathlib import Path

from wdlab.claims import stats
from wdlab.claims.base import Arm, Claim, ClaimData, Evidence, Trial
from wdlab.claims.plots import line_plot

PREFIX = "mon/angle_ratio/"
LR, WD = 3e-3, 1.0  # ηλ = 3e-3: equilibrium is expected after a few 1/(ηλ) ≈ 333 steps
TOLERANCE = 1.2  # "matches": within 20% of the prediction
SOURCE = (
    "Kosson, Messmer, Jaggi 2024, 'Rotational Equilibrium: How Weight Decay Balances "
    "Learning Across Neural Networks' (ICML)"
)


class AngularEquilibrium(Claim):
    name = "angular-equilibrium"
    title = "The angular update settles at the predicted equilibrium after ~1/(ηλ) steps"
    source = SOURCE
    statement = (
        "For a scale-invariant weight, weight decay and gradient updates balance: after a "
        "transient of a few 1/(ηλ) steps the angle each step rotates the weight by equals "
        "a value set by the optimizer's hyperparameters alone (AdamW: "
        "sqrt(2ηλ(1−β1)/(1+β1))), in every scale-invariant layer."
    )
    statistic = (
        "per seed, the worst scale-invariant layer's |log(measured / predicted angle)|, the "
        "ratio averaged over the steps after 3/(ηλ) (the monitor's angle_ratio); AdamW "
        f"lr {LR:g}, wd {WD:g}, constant schedule; teacher with BatchNorm after each hidden "
        "Linear (those weights are scale-invariant)"
    )
    test = (
        f"one-sample t-test over seeds, one-sided: mean worst-layer |log ratio| < "
        f"log {TOLERANCE:g} (within {round((TOLERANCE - 1) * 100)}%)"
    )

    def arms(self, quick: bool = False) -> list[Arm]:
        # teacher, not digits: its 4096 noisy examples keep the gradient noise the random-walk
        # equilibrium assumes. On digits (200 images) the train loss is ~0.005 by step 100
        # and the measured angle fell to 0.1-0.6 of the prediction (run of 2026-12-01).
        steps, tiny = ("steps=40", True) if quick else ("steps=1300", False)
        return [Arm("adamw", "teacher", (
            steps, "train.stop_at_target=false", "model.norm=batchnorm", f"optimizer.lr={LR}",
            f"optimizer.weight_decay={WD}", "schedule.kind=constant", "schedule.warmup=0"),
            {}, 3, tiny)]  # fmt: skip

    def analyse(self, data: ClaimData) -> Evidence:
        start = 3.0 / (LR * WD)
        layers: dict[int, dict[str, float]] = {}

        curves: list[tuple[str, list[float], list[float]]] = []

        def worst(t: Trial) -> float:
            names = [n for n in data.names(t, PREFIX) if ":" not in n[len(PREFIX):]]
            per_layer = {}
            for name in names:
                series = data.series(t, name)
                if not series:
                    continue
                curves.append((f"{name[len(PREFIX):]} seed {t.seed}",
                               [float(s) for s, _ in series], [v for _, v in series]))
                begin = min(start, series[0][0] + 0.75 * (series[-1][0] - series[0][0]))
                window = [v for s, v in series if s >= begin and math.isfinite(v) and v > 0]
                if window:
                    per_layer[name[len(PREFIX):]] = sum(window) / len(window)
            layers[t.seed] = per_layer
            if not per_layer:
                return math.nan
            return max(abs(math.log(r)) for r in per_layer.values())

        values = data.by_seed("adamw", worst)
        seeds = sorted(values)
        test = stats.one_sample([values[s] for s in seeds], math.log(TOLERANCE), "less",
                                "worst-layer |log(angle / predicted)|")  # fmt: skip
        rows = [[s, values[s], ", ".join(f"{n}: {r:.3f}" for n, r in layers.get(s, {}).items())]
                for s in seeds]  # fmt: skip
        def draw(files: Path) -> list[Path]:
            return [line_plot(files / "angle_ratio.png", "measured / predicted angular update",
                              "step", "angle ratio", curves, logx=False, hline=1.0)]

        return Evidence.from_tests(
            [test], plots=[draw],
            columns=["seed", "worst |log ratio|", "ratio per layer"], rows=rows,
            notes=[f"Window: steps ≥ 3/(ηλ) = {start:g} (the last quarter when the run is "
                   "shorter, as in --quick)."],
        )  # fmt: skip
