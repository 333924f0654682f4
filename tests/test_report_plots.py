"""plot_run writes the expected PNGs for a synthetic metrics dict, atomically."""

from __future__ import annotations

import math

from wdlab.report import plot_run, safe_title


def _series(f, n=20):
    return [(s, f(s)) for s in range(1, n + 1)]


def test_plot_run_writes_expected_files(tmp_path):
    metrics = {
        "train_loss": _series(lambda s: 3 / s),
        "val_loss": _series(lambda s: 3.2 / s),
        "val_accuracy": _series(lambda s: 1 - 1 / s),
        "lr": _series(lambda s: 1e-3),
        "mon/angle/role:matrix": _series(lambda s: 0.01),
        "mon/angle/role:si": _series(lambda s: 0.02),
        "mon/angle_pred/role:si": _series(lambda s: 0.021),
        "mon/w_norm/role:matrix": _series(lambda s: 5.0),
        "mon/eff_lr/role:si": _series(lambda s: 1e-4),
        "mon/attn_entropy/layer:0": _series(lambda s: math.log(8)),
        "mon/attn_entropy/layer:1": _series(lambda s: 1.0),
        "mon/attn_max_logit/layer:0": _series(lambda s: 4.0),
        "mon/logz_mean": _series(lambda s: 2.0),
        "mon/angle/blocks.0.w": _series(lambda s: 0.01),  # per tensor: stored, not plotted
    }
    paths = plot_run(metrics, tmp_path / "plots", title="charlm $x$ \x1b[31m")
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [
            "loss.png",
            "eval.png",
            "lr.png",
            "monitor_angle.png",
            "monitor_norm.png",
            "monitor_eff_lr.png",
            "monitor_attention.png",
            "monitor_logz.png",
        ]
    )
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(f.name for f in (tmp_path / "plots").iterdir()) == names  # no temp files left


def test_plot_run_without_monitor_metrics(tmp_path):
    paths = plot_run({"train_loss": _series(lambda s: 1.0), "val_loss": []}, tmp_path)
    assert [p.name for p in paths] == ["loss.png"]


def test_safe_title():
    assert safe_title("a\nb$c") == r"a b\$c"
    assert len(safe_title("x" * 500)) == 120
