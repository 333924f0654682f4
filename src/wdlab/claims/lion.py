"""Lion with decoupled λ keeps ‖x‖∞ ≤ 1/λ (Chen et al. 2023)."""

from __future__ import annotations

import math
from pathlib import Path

from wdlab.claims import stats
from wdlab.claims.base import Arm, Claim, ClaimData, Evidence, Trial
from wdlab.claims.plots import line_plot

PREFIX = "mon/lion_bound/"
TOLERANCE = 0.01  # the bound is approached from above as (1 − ηλ)^t: the stated slack
LAMBDA, LR = 20.0, 5e-4


class LionBound(Claim):
    name = "lion-linf-bound"
    title = "Lion with decoupled weight decay keeps ‖x‖∞ ≤ 1/λ"
    source = (
        "Chen, Liang, Huang, Real et al. 2023, 'Symbolic Discovery of Optimization "
        "Algorithms'; Chen, Liu, Liang, Liu 2024, 'Lion Secretly Solves Constrained "
        "Optimization: As Lyapunov Predicts' (ICLR)"
    )
    statement = (
        "Lion's update is a sign, so with decoupled decay x ← (1 − ηλ)x − η·sign(·) every "
        "coordinate is pulled into the box |x| ≤ 1/λ and stays there once inside: the "
        "iterates solve the problem constrained to ‖x‖∞ ≤ 1/λ."
    )
    statistic = (
        "max over the last quarter of training of max_tensors ‖w‖∞·λ (the monitor's "
        f"lion_bound), with λ = {LAMBDA:g} so that 1/λ = {1 / LAMBDA:g} is below the "
        "initial weights' largest entries"
    )
    test = f"one-sample t-test over seeds, one-sided: mean bound < 1 + {TOLERANCE:g}"

    def arms(self, quick: bool = False) -> list[Arm]:
        # ηλ = 0.01: the initial excess (λ·max|x_0| ≈ 2.5) shrinks below the tolerance
        # after ~550 steps, so the last quarter of 800 steps is inside the box.
        steps, tiny = ("steps=40", True) if quick else ("steps=800", False)
        return [Arm("lion", "digits", (
            steps, "train.stop_at_target=false", "optimizer.name=lion", f"optimizer.lr={LR}",
            f"optimizer.weight_decay={LAMBDA}", "optimizer.betas=[0.9, 0.99]",
            "schedule.kind=constant", "schedule.warmup=0"), {}, 3, tiny)]  # fmt: skip

    def analyse(self, data: ClaimData) -> Evidence:
        curves: dict[int, dict[int, float]] = {}

        def bound(t: Trial, first: bool = False) -> float:
            per_step: dict[int, float] = {}
            for name in data.names(t, PREFIX):
                for step, value in data.series(t, name):
                    per_step[step] = max(per_step.get(step, -math.inf), value)
            curves[t.seed] = per_step
            if not per_step:
                return math.nan
            steps = sorted(per_step)
            if first:
                return per_step[steps[0]]
            start = steps[-1] - 0.25 * (steps[-1] - steps[0])
            return max(per_step[s] for s in steps if s >= start)

        late = data.by_seed("lion", bound)
        early = data.by_seed("lion", lambda t: bound(t, first=True))
        seeds = sorted(late)
        test = stats.one_sample([late[s] for s in seeds], 1.0 + TOLERANCE, "less",
                                "max ‖w‖∞·λ over the last quarter")  # fmt: skip
        def draw(files: Path) -> list[Path]:
            lines = [(f"seed {s}", list(c), list(c.values())) for s, c in sorted(curves.items())]
            return [line_plot(files / "bound.png", "max over tensors of ‖w‖∞·λ", "step",
                              "‖w‖∞·λ (1 = the box)", lines, logx=False, hline=1.0)]

        return Evidence.from_tests(
            [test], plots=[draw],
            columns=["seed", "‖w‖∞·λ at the first probe", "max ‖w‖∞·λ, last quarter"],
            rows=[[s, early.get(s), late[s]] for s in seeds],
            notes=["The first probe's value above 1 shows the constraint was active: the "
                   "weights started outside the box."],
        )  # fmt: skip
