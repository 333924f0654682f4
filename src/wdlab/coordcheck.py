"""Width diagnostics: the μP coordinate check and the top-singular-value check.

Coordinate check (Tensor Programs V, REFERENCE.md §4): train one model per width for a few
steps and record the mean |x| of every layer's output at each step. Under a rule that
transfers (mup and the rules built on it) the curves are flat in width; under sp with Adam
they grow, because every weight entry moves by ~lr whatever the fan_in.
Top-singular-value check (Fan et al. 2025): after training, the largest singular value of
each matching hidden matrix should agree across widths when weight decay is scaled right.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wdlab import workloads
from wdlab.factory import create_optimizer
from wdlab.groups import classify, input_weights
from wdlab.scaling import RULES
from wdlab.workloads.base import Workload

__all__ = [
    "WIDTH_FIELDS",
    "make_workload",
    "coord_check",
    "coord_slopes",
    "plot_coord_check",
    "top_singular_values",
    "singular_value_check",
    "plot_singular_values",
]

# The model.* setting that sets each workload's width (Workload.width reads it back).
WIDTH_FIELDS = {"charlm": "d_model", "grokking": "d_model", "teacher": "width", "digits": "width"}


def make_workload(
    name: str,
    width: int,
    *,
    seed: int = 0,
    tiny: bool = False,
    model: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> Workload:
    """Workload `name` from its recipe (tiny or full) with its width set to `width`."""
    cls = workloads.get(name)
    field = WIDTH_FIELDS.get(name)
    if field is None:
        raise ValueError(
            f"workload {name!r} has no known width setting; known: {', '.join(WIDTH_FIELDS)}"
        )
    recipe = cls.recipe(tiny=tiny)
    model_cfg = {**recipe.get("model", {}), **(model or {}), field: int(width)}
    data_cfg = {**recipe.get("data", {}), **(data or {})}
    workload = cls(cls.ModelConfig(**model_cfg), cls.DataConfig(**data_cfg), seed=seed)
    if workload.width != width:
        raise ValueError(f"workload {name!r} reports width {workload.width}, asked for {width}")
    return workload


def _check_widths(widths: Sequence[int]) -> list[int]:
    widths = [int(w) for w in widths]
    if len(widths) < 2 or any(w < 1 for w in widths) or len(set(widths)) != len(widths):
        raise ValueError(f"widths must be at least two distinct positive integers, got {widths}")
    return sorted(widths)


def _mean_abs(out: Any) -> float | None:
    if isinstance(out, (tuple, list)):
        out = out[0] if out else None
    if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
        return float(out.detach().abs().mean())
    return None


def _optimizer(
    workload: Workload, model: nn.Module, name: str, lr: float, weight_decay: float,
    rule: str, base_width: int,
) -> torch.optim.Optimizer:
    hparams = dict(workload.recipe().get("optimizer", {}))
    extra = {k: tuple(v) if isinstance(v, list) else v for k, v in hparams.items()
             if k not in ("name", "lr", "weight_decay")}
    if name != hparams.get("name", name):
        extra = {}  # the recipe's betas etc. belong to its own optimizer
    return create_optimizer(
        model, name, lr=lr, weight_decay=weight_decay, example_input=workload.example_input(),
        scaling=rule, base_width=base_width, width=workload.width, **extra,
    )


def coord_check(
    workload_name: str,
    widths: Sequence[int],
    steps: int = 4,
    *,
    rule: str = "mup",
    base_width: int | None = None,
    lr: float | None = None,
    optimizer: str = "adamw",
    seeds: Sequence[int] = (0,),
    tiny: bool = False,
    model: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Mean |output| of every leaf layer (modules without children) at each of the
    first `steps` training steps, per width, averaged over `seeds`.

    Step 1 is the forward at initialization; each later step follows one optimizer update
    at constant `lr` (default: the recipe's) with weight decay 0. base_width defaults to
    the smallest width. Returns {"workload", "rule", "base_width", "lr", "optimizer",
    "widths", "steps", "seeds", "layers", "mean_abs": {layer: [[step 1..steps] per width]}}.
    """
    widths = _check_widths(widths)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    base_width = base_width or widths[0]
    lr = lr if lr is not None else workloads.get(workload_name).recipe(tiny=tiny)["optimizer"]["lr"]
    sums: dict[str, list[list[float]]] = {}
    for wi, width in enumerate(widths):
        for seed in seeds:
            workload = make_workload(workload_name, width, seed=seed, tiny=tiny, model=model,
                                     data=data)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = workload.build_model()
                opt = _optimizer(workload, net, optimizer, lr, 0.0, rule, base_width)
                record: dict[str, float] = {}
                hooks = [
                    module.register_forward_hook(
                        lambda _m, _i, out, name=name, record=record: _store(record, name, out)
                    )
                    for name, module in net.named_modules()
                    if name and not any(True for _ in module.children())
                ]
                net.train()
                try:
                    for step in range(steps):
                        record.clear()
                        loss = workload.loss(net, workload.batch(step))
                        for name, value in record.items():
                            rows = sums.setdefault(
                                name, [[0.0] * steps for _ in range(len(widths))]
                            )
                            rows[wi][step] += value / len(seeds)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                finally:
                    for h in hooks:
                        h.remove()
    return {
        "workload": workload_name, "rule": rule, "base_width": base_width, "lr": lr,
        "optimizer": optimizer, "widths": widths, "steps": steps, "seeds": list(seeds),
        "layers": list(sums), "mean_abs": sums,
    }


def _store(record: dict[str, float], name: str, out: Any) -> None:
    value = _mean_abs(out)
    if value is not None:
        record[name] = value


def coord_slopes(data: Mapping[str, Any], step: int = -1) -> dict[str, float]:
    """Least-squares slope of log(mean |x|) against log(width), per layer, at `step`
    (0-based; -1 = the last). 0 is flat; 1 grows like the width."""
    logw = [math.log(w) for w in data["widths"]]
    mean_w = sum(logw) / len(logw)
    var = sum((x - mean_w) ** 2 for x in logw)
    slopes = {}
    for layer, rows in data["mean_abs"].items():
        ys = [math.log(max(r[step], 1e-30)) for r in rows]
        mean_y = sum(ys) / len(ys)
        cov = sum((x - mean_w) * (y - mean_y) for x, y in zip(logw, ys, strict=True))
        slopes[layer] = cov / var
    return slopes


FLAT_SLOPE = 0.2  # |log-log slope| at or below this counts as flat across widths


def coord_verdict(slopes: Mapping[str, float], tolerance: float = FLAT_SLOPE) -> tuple[bool, str]:
    """(passed, one line): every layer's activation size flat across widths (|slope| <=
    tolerance, i.e. it changes by less than 2^tolerance per doubling), or which layers are not."""
    bad = {k: v for k, v in slopes.items() if abs(v) > tolerance}
    if not bad:
        return True, (f"PASS: all {len(slopes)} layers keep their activation size across "
                      f"widths (|slope| <= {tolerance:g})")
    worst = max(bad, key=lambda k: abs(bad[k]))
    direction = "grow" if bad[worst] > 0 else "shrink"
    return False, (f"FAIL: {len(bad)} of {len(slopes)} layers {direction} with width; worst "
                   f"{worst} (mean |x| ∝ width^{bad[worst]:+.2f}; flat is |slope| <= "
                   f"{tolerance:g})")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_coord_check(data: Mapping[str, Any], path: str | Path) -> Path:
    """One panel per step: mean |x| of each layer against width (log-log). Written to `path`."""
    plt = _pyplot()
    steps, widths = data["steps"], data["widths"]
    slopes = coord_slopes(data)
    passed, verdict = coord_verdict(slopes)
    # The layers that move most are drawn in colour and named in the legend (with their
    # slope); the flat rest stay thin and grey, so a plot of 40 layers stays readable.
    ranked = sorted(slopes, key=lambda k: -abs(slopes[k]))
    named = set(ranked[:8])
    fig, axes = plt.subplots(1, steps, figsize=(3.2 * steps + 3.0, 3.6), sharey=True,
                             squeeze=False)
    for t, ax in enumerate(axes[0]):
        for layer, rows in data["mean_abs"].items():
            values = [r[t] for r in rows]
            if layer in named:
                ax.plot(widths, values, marker=".", linewidth=1.4,
                        label=f"{layer} ({slopes[layer]:+.2f})")
            else:
                ax.plot(widths, values, color="0.75", linewidth=0.6)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.set_title(f"step {t + 1}")
        ax.set_xlabel("width")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean |activation|")
    fig.suptitle(f"{data['workload']}: coord check, rule {data['rule']}, lr {data['lr']:g}\n"
                 f"{verdict}", color="black" if passed else "darkred", fontsize=9)
    axes[0][-1].legend(title="largest slopes vs width", fontsize=6, title_fontsize=7,
                       loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


@torch.no_grad()
def top_singular_values(
    model: nn.Module, infos: Sequence[Any] | None = None, example_input: Any = None
) -> dict[str, float]:
    """Largest singular value of every hidden matrix (role "matrix", not fed by the raw
    input: an input layer's fan_in does not grow with width), by parameter name; conv
    kernels are flattened to (out_channels, rest). classify(model, probe=False) decides the
    roles unless `infos` is given; `example_input` finds the input layer (wdlab.groups)."""
    infos = infos if infos is not None else classify(model, probe=False)
    inputs = input_weights(model, example_input)
    params = dict(model.named_parameters())
    out = {}
    for info in infos:
        if info.role != "matrix" or info.name in inputs:
            continue
        w = params[info.name].detach().float()
        out[info.name] = float(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2))
    return out


def singular_value_check(
    workload_name: str,
    widths: Sequence[int],
    steps: int = 200,
    *,
    rule: str = "fan",
    base_width: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    optimizer: str = "adamw",
    seed: int = 0,
    tiny: bool = False,
    model: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train each width for `steps` steps (constant lr, the recipe's lr and weight decay by
    default) under `rule`; return the top singular value of every hidden matrix per width:
    {"workload", "rule", "base_width", "lr", "weight_decay", "widths", "steps",
    "sigma": {name: [per width]}, "final_loss": [per width]}."""
    widths = _check_widths(widths)
    base_width = base_width or widths[0]
    recipe = workloads.get(workload_name).recipe(tiny=tiny)["optimizer"]
    lr = lr if lr is not None else recipe["lr"]
    weight_decay = weight_decay if weight_decay is not None else recipe.get("weight_decay", 0.0)
    sigma: dict[str, list[float]] = {}
    losses = []
    for width in widths:
        workload = make_workload(workload_name, width, seed=seed, tiny=tiny, model=model,
                                 data=data)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = workload.build_model()
            opt = _optimizer(workload, net, optimizer, lr, weight_decay, rule, base_width)
            net.train()
            loss = torch.tensor(float("nan"))
            for step in range(steps):
                loss = workload.loss(net, workload.batch(step))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        losses.append(float(loss.detach()))
        for name, value in top_singular_values(net, example_input=workload.example_input()).items():
            sigma.setdefault(name, []).append(value)
    return {
        "workload": workload_name, "rule": rule, "base_width": base_width, "lr": lr,
        "weight_decay": weight_decay, "widths": widths, "steps": steps, "sigma": sigma,
        "final_loss": losses,
    }


def plot_singular_values(data: Mapping[str, Any], path: str | Path) -> Path:
    """Top singular value of each hidden matrix against width (log-log), written to `path`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, values in data["sigma"].items():
        ax.plot(data["widths"], values, marker=".", linewidth=0.8, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel("top singular value")
    ax.set_title(f"{data['workload']}: rule {data['rule']}, {data['steps']} steps")
    if len(data["sigma"]) <= 12:
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
