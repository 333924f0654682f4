"""Plots of one run (matplotlib, Agg canvas, no pyplot state): curves and monitor diagnostics.

The monitor metric names follow wdlab.monitor.monitor's scheme: summaries are
"mon/<probe>/role:<role>" and "mon/<probe>/layer:<k>". Each PNG is written to a temporary
file beside its target and renamed, so a crash never leaves a half-written image.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wdlab.atomic import atomic_open

Series = list[tuple[int, float]]

_ROLE = re.compile(r"^mon/([a-z_]+)/role:([A-Za-z0-9_]+)$")
_LAYER = re.compile(r"^mon/([a-z_]+)/layer:(\d+)$")
_FREQUENCY = re.compile(r"val_loss_freq(\d+)")  # loss per token-frequency bucket (charlm)


def safe_title(text: str, limit: int = 120) -> str:
    """A title matplotlib draws literally: no control characters, no mathtext, bounded."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(text))[:limit]
    return text.replace("$", r"\$")


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100, bbox_inches="tight")
    return path


def _plot(ax, series: Series, label: str, **kw) -> None:
    pts = sorted(series)
    ax.plot([s for s, _ in pts], [v for _, v in pts], label=label, **kw)


def _figure(title: str, n: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(6.4 * min(n, 2), 4.0 * ((n + 1) // 2)))
    axes = [fig.add_subplot((n + 1) // 2, min(n, 2), i + 1) for i in range(n)]
    if title:
        fig.suptitle(safe_title(title))
    return fig, axes


def _finish(ax, ylabel: str, log: bool = False) -> None:
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def _by_pattern(metrics: dict[str, Series], pattern: re.Pattern, probe: str) -> dict[str, Series]:
    out = {}
    for name, series in metrics.items():
        m = pattern.match(name)
        if m and m.group(1) == probe and series:
            out[m.group(2)] = series
    return dict(sorted(out.items(), key=lambda kv: (not kv[0].isdigit(), _num(kv[0]))))


def _num(key: str) -> int | str:
    return int(key) if key.isdigit() else key


def _positive(series: Iterable[Series]) -> bool:
    return all(v > 0 for s in series for _, v in s)


def plot_run(metrics: dict[str, Series], out_dir: Path, title: str = "") -> list[Path]:
    """Write the run's PNGs into out_dir and return their paths (only plots with data).

    loss.png (train_loss and val_loss together), loss_by_frequency.png (val_loss_freq*),
    eval.png (other val_* metrics: accuracy, ECE, RankMe, ...; each with its train_* twin
    where the workload logs one, e.g. grokking's train_accuracy), lr.png; with monitor
    metrics: monitor_angle.png (angular update per role, and the scale-invariant tensors'
    measured vs predicted equilibrium), monitor_norm.png, monitor_eff_lr.png,
    monitor_attention.png (entropy and max logit per layer), monitor_logz.png.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    has = {k for k, v in metrics.items() if v}

    if has & {"train_loss", "val_loss"}:
        fig, (ax,) = _figure(title)
        for key in ("train_loss", "val_loss"):
            if key in has:
                _plot(ax, metrics[key], key)
        ax.set_title("loss")
        _finish(ax, "loss")
        written.append(_save(fig, out_dir / "loss.png"))

    by_frequency = sorted((k for k in has if _FREQUENCY.fullmatch(k)),
                          key=lambda k: int(k.removeprefix("val_loss_freq")))
    if by_frequency:  # charlm's loss per character-frequency quartile, one plot to compare
        fig, (ax,) = _figure(title)
        for key in by_frequency:
            _plot(ax, metrics[key], key.removeprefix("val_loss_"))
        ax.set_title("validation loss by token frequency (freq0: most frequent)")
        _finish(ax, "loss")
        written.append(_save(fig, out_dir / "loss_by_frequency.png"))

    evals = sorted(k for k in has if k.startswith("val_") and k != "val_loss"
                   and k not in by_frequency)
    if evals:
        fig, axes = _figure(title, len(evals))
        for ax, key in zip(axes, evals, strict=False):
            _plot(ax, metrics[key], key)
            twin = "train_" + key.removeprefix("val_")  # e.g. train_accuracy beside val_accuracy
            if twin in has:
                _plot(ax, metrics[twin], twin, linestyle="--")
            name = key.removeprefix("val_")
            ax.set_title(f"{name}: train and val" if twin in has else key)
            _finish(ax, key)
        written.append(_save(fig, out_dir / "eval.png"))

    if "lr" in has:
        fig, (ax,) = _figure(title)
        _plot(ax, metrics["lr"], "lr")
        ax.set_title("learning rate")
        _finish(ax, "lr")
        written.append(_save(fig, out_dir / "lr.png"))

    angle = _by_pattern(metrics, _ROLE, "angle")
    pred = _by_pattern(metrics, _ROLE, "angle_pred")
    if angle:
        fig, (ax,) = _figure(title)
        for role, series in angle.items():
            if role != "si":
                _plot(ax, series, f"{role}")
        if "si" in angle and "si" in pred:
            _plot(ax, angle["si"], "scale-invariant: measured", color="black")
            _plot(ax, pred["si"], "scale-invariant: predicted", color="black", linestyle="--")
        ax.set_title("angular update per step (mean per role)")
        _finish(ax, "radians", log=_positive(angle.values()))
        written.append(_save(fig, out_dir / "monitor_angle.png"))

    for probe, fname, label in (
        ("w_norm", "monitor_norm.png", "weight norm"),
        ("eff_lr", "monitor_eff_lr.png", "effective lr η/‖w‖²"),
    ):
        series = _by_pattern(metrics, _ROLE, probe)
        if not series:
            continue
        fig, (ax,) = _figure(title)
        for role, s in series.items():
            _plot(ax, s, role)
        if probe == "w_norm" and "si" in (p := _by_pattern(metrics, _ROLE, "norm_pred")):
            _plot(ax, p["si"], "scale-invariant: predicted", color="black", linestyle="--")
        ax.set_title(f"{label} (mean per role)")
        _finish(ax, label, log=_positive(series.values()))
        written.append(_save(fig, out_dir / fname))

    entropy = _by_pattern(metrics, _LAYER, "attn_entropy")
    max_logit = _by_pattern(metrics, _LAYER, "attn_max_logit")
    if entropy or max_logit:
        panels = [
            (n, s)
            for n, s in (("attention entropy (nats)", entropy), ("max attention logit", max_logit))
            if s
        ]
        fig, axes = _figure(title, len(panels))
        for ax, (name, per_layer) in zip(axes, panels, strict=False):
            for layer, s in per_layer.items():
                _plot(ax, s, f"layer {layer}")
            ax.set_title(name)
            _finish(ax, name)
        written.append(_save(fig, out_dir / "monitor_attention.png"))

    logz = [k for k in ("mon/logz_mean", "mon/logz_max", "mon/logit_max") if k in has]
    if logz:
        fig, (ax,) = _figure(title)
        for key in logz:
            _plot(ax, metrics[key], key.removeprefix("mon/"))
        ax.set_title("output logits: log Z and max logit")
        _finish(ax, "nats")
        written.append(_save(fig, out_dir / "monitor_logz.png"))
    return written


# --------------------------------------------------------------------------- sweep and bench plots
# Used by wdlab.html_report and wdlab.bench. Labels come from users (optimizer names, config
# values), so every one goes through safe_title before matplotlib sees it.

_NAN = float("nan")


def _colors(keys: Iterable[str]) -> dict[str, object]:
    """One stable color per key (tab10 order), so a key keeps its color across plots."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {key: cmap(i % 10) for i, key in enumerate(sorted(set(keys)))}


def plot_curves(
    curves: list[tuple[str, str, Series]], path: Path, title: str, ylabel: str = "train loss"
) -> Path:
    """All trials' curves on one axis, colored by group (e.g. optimizer); one legend entry
    per group. `curves` holds (group, trial label, series)."""
    fig, (ax,) = _figure(title)
    colors = _colors(g for g, _, _ in curves)
    seen: set[str] = set()
    for group, _label, series in curves:
        finite = [(s, v) for s, v in series if v == v and abs(v) != float("inf")]
        if not finite:
            continue
        label = safe_title(group, 60) if group not in seen else None
        seen.add(group)
        _plot(ax, finite, label, color=colors[group], alpha=0.8, linewidth=1.0)
    ax.set_title(ylabel + " of every trial")
    _finish(ax, ylabel, log=_positive(s for _, _, s in curves))
    return _save(fig, Path(path))


def plot_heatmap(
    lrs: list[float],
    wds: list[float],
    values: list[list[float]],
    labels: list[list[str]],
    path: Path,
    title: str,
    cbar: str,
    higher_is_better: bool = False,
) -> Path:
    """An LR (columns) × WD (rows) grid. values[i][j] belongs to (wds[i], lrs[j]); NaN cells
    are drawn grey and carry their text from `labels` ("diverged", "missing", "miss")."""
    import numpy as np

    data = np.ma.masked_invalid(np.asarray(values, dtype=float).reshape(len(wds), len(lrs)))
    fig = Figure(figsize=(1.2 * len(lrs) + 3.0, 0.7 * len(wds) + 2.2))
    ax = fig.add_subplot(1, 1, 1)
    cmap = _grey_bad("viridis" if higher_is_better else "viridis_r")  # yellow = best
    image = ax.imshow(data, cmap=cmap, aspect="auto", origin="lower")
    if data.count():
        fig.colorbar(image, ax=ax, label=safe_title(cbar, 60))
    for i in range(len(wds)):
        for j in range(len(lrs)):
            ax.text(
                j,
                i,
                safe_title(labels[i][j], 20),
                ha="center",
                va="center",
                fontsize=8,
                color="black",
                bbox={"facecolor": "white", "alpha": 0.6, "linewidth": 0, "pad": 1},
            )
    ax.set_xticks(range(len(lrs)), [f"{v:.3g}" for v in lrs], rotation=45)
    ax.set_yticks(range(len(wds)), [f"{v:.3g}" for v in wds])
    ax.set_xlabel("learning rate")
    ax.set_ylabel("weight decay")
    ax.set_title(safe_title(title))
    return _save(fig, Path(path))


def _grey_bad(name: str):
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="0.55")


def plot_lr_sensitivity(
    lines: list[tuple[str, list[float], list[float]]],
    init_loss: float | None,
    path: Path,
    title: str,
    ylabel: str = "final loss",
) -> Path:
    """Final loss against learning rate (log x), one line per (label, lrs, losses); diverged
    points (NaN) are drawn at ℓ0 with an x, as the LR-sensitivity score counts them."""
    fig, (ax,) = _figure(title)
    colors = _colors(label for label, _, _ in lines)
    for label, lrs, losses in lines:
        pts = sorted(zip(lrs, losses, strict=True))
        xs = [x for x, _ in pts]
        ys = [y if y == y and abs(y) != float("inf") else _NAN for _, y in pts]
        ax.plot(xs, ys, marker="o", label=safe_title(label, 80), color=colors[label])
        bad = [x for x, y in zip(xs, ys, strict=True) if y != y]
        if bad and init_loss is not None:
            ax.plot(bad, [init_loss] * len(bad), "x", color=colors[label], markersize=9)
    if init_loss is not None:
        ax.axhline(init_loss, color="0.4", linestyle=":", label=f"ℓ0 = {init_loss:.4g}")
    ax.set_xscale("log")
    ax.set_title("LR sensitivity")
    _finish(ax, ylabel)
    ax.set_xlabel("learning rate")
    return _save(fig, Path(path))


def plot_profile(
    profile: dict[str, list[tuple[float, float]]], path: Path, title: str, r_max: float = 4.0
) -> Path:
    """AlgoPerf performance profiles: ρ(τ) as right-continuous steps on [1, r_max]."""
    fig, (ax,) = _figure(title)
    colors = _colors(profile)
    for name, points in profile.items():
        pts = sorted(points)
        if not pts or pts[-1][0] < r_max:
            pts.append((r_max, pts[-1][1] if pts else 0.0))
        ax.plot(
            [t for t, _ in pts],
            [r for _, r in pts],
            drawstyle="steps-post",
            label=safe_title(name, 60),
            color=colors[name],
            linewidth=2,
        )
    ax.set_xlim(1.0, r_max)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("performance profile")
    _finish(ax, "fraction of workloads ρ(τ)")
    ax.set_xlabel("τ (time / best time)")
    return _save(fig, Path(path))
