"""Plots of one run (matplotlib, Agg canvas, no pyplot state): curves and monitor diagnostics.

The monitor metric names follow wdlab.monitor.monitor's scheme: summaries are
"mon/<probe>/role:<role>" and "mon/<probe>/layer:<k>". Each PNG is written to a temporary
file beside its target and renamed, so a crash never leaves a half-written image.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Series = list[tuple[int, float]]

_ROLE = re.compile(r"^mon/([a-z_]+)/role:([A-Za-z0-9_]+)$")
_LAYER = re.compile(r"^mon/([a-z_]+)/layer:(\d+)$")


def safe_title(text: str, limit: int = 120) -> str:
    """A title matplotlib draws literally: no control characters, no mathtext, bounded."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(text))[:limit]
    return text.replace("$", r"\$")


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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

    loss.png (train_loss, val_loss), eval.png (other val_* metrics), lr.png; with monitor
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

    evals = sorted(k for k in has if k.startswith("val_") and k != "val_loss")
    if evals:
        fig, axes = _figure(title, len(evals))
        for ax, key in zip(axes, evals, strict=False):
            _plot(ax, metrics[key], key)
            ax.set_title(key)
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
