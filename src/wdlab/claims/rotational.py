"""The rotational variant reduces the need for learning-rate warm-up (Kosson et al. 2024)."""

from __future__ import annotations

from wdlab.claims import stats
from wdlab.claims.base import Arm, Claim, ClaimData, Evidence, Feature, final, paired_values
from wdlab.claims.equilibrium import SOURCE


def _rotational_selectable() -> bool:
    from wdlab.config import OptimizerConfig

    return "wrapper" in OptimizerConfig.model_fields


class RotationalWarmup(Claim):
    name = "rotational-warmup"
    title = "The rotational variant reduces the need for learning-rate warm-up"
    source = SOURCE
    statement = (
        "Without warm-up, AdamW's early steps rotate scale-invariant weights far more than at "
        "equilibrium, which hurts; the rotational variant imposes the equilibrium angle from "
        "the first step, so dropping the warm-up costs it less than it costs AdamW."
    )
    statistic = (
        "final val_loss without warm-up minus with 50 warm-up steps, for AdamW and for "
        "its rotational variant (digits, lr 1e-2)"
    )
    test = "paired t-test over seeds, one-sided: cost(AdamW) − cost(rotational) > 0"
    # wdlab.optim.RotationalWrapper exists, but a run config cannot wrap an optimizer yet.
    needs = (Feature('optimizer.wrapper="rotational" in a run config', _rotational_selectable),)

    def arms(self, quick: bool = False) -> list[Arm]:
        steps, tiny = ("steps=40", True) if quick else ("steps=400", False)
        base = (steps, "train.stop_at_target=false", "optimizer.lr=0.01")
        return [Arm(f"{kind}", "digits", (*base, *extra),
                    {"schedule.warmup": [0, 50]}, 3, tiny)
                for kind, extra in (("adamw", ()), ("rotational",
                                                    ("optimizer.wrapper=rotational",)))]

    def analyse(self, data: ClaimData) -> Evidence:
        cost = {}
        for key in ("adamw", "rotational"):
            cold = data.by_seed(key, final("val_loss"), {"schedule.warmup": 0})
            warm = data.by_seed(key, final("val_loss"), {"schedule.warmup": 50})
            cost[key] = {s: cold[s] - warm[s] for s in set(cold) & set(warm)}
        a, b = paired_values(cost["adamw"], cost["rotational"])
        test = stats.paired(a, b, "greater", "cost of no warm-up: AdamW vs rotational")
        seeds = sorted(set(cost["adamw"]) & set(cost["rotational"]))
        return Evidence.from_tests(
            [test], columns=["seed", "cost AdamW", "cost rotational"],
            rows=[[s, cost["adamw"][s], cost["rotational"][s]] for s in seeds],
        )  # fmt: skip
