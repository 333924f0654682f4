"""One self-contained HTML report of a sweep or a run: tables, plots, and honest comparisons.

Why one file: a report gets mailed, attached to an issue or opened years later, so it
carries its images as base64 data URIs and its CSS inline, and needs nothing else. The
PNGs are also written beside it (`<stem>_files/`) for slides and papers.

Every string that a user controls (names, config values, error messages, metric names)
goes through `html.escape` on its way into the page; numbers are formatted here. The HTML
is written to a temporary file and renamed, so a crash never leaves half a report.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wdlab import report, scoring
from wdlab.atomic import atomic_open
from wdlab.averaging import label as method_label
from wdlab.errors import WdlabError
from wdlab.store import RunRecord, Store, SweepRecord

__all__ = [
    "ALPHA",
    "HeatGrid",
    "TrialView",
    "build_report",
    "compare_optimizers",
    "heatmap_grid",
    "init_loss",
]

ALPHA = 0.05  # level of the one-sided tests behind every "beats" in a report
_LR, _WD, _OPT = "optimizer.lr", "optimizer.weight_decay", "optimizer.name"
_AVG = "train.average"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr.diverged td,tr.failed td{background:#fdecea}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.note{color:#555;font-size:.9em}code{background:#f5f5f5;padding:0 .2em}
"""


def _e(value: Any) -> str:
    """Escape anything for HTML text or attribute context."""
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:40] or "x"


# --------------------------------------------------------------------------- trial data


@dataclass
class TrialView:
    """One trial with everything the report draws from it."""

    index: int
    params: dict[str, Any]
    status: str
    optimizer: str
    lr: float | None
    wd: float | None
    seed: int | None
    metric_value: float | None = None
    reached: bool | None = None
    steps_to_target: int | None = None
    seconds_to_target: float | None = None
    final_loss: float | None = None
    init_loss: float | None = None
    run_id: str | None = None
    error: str | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)

    def config_key(self) -> tuple[tuple[str, str], ...]:
        """The hyperparameters without the seed: trials sharing it are seeds of one config."""
        return tuple(sorted((k, json.dumps(v)) for k, v in self.params.items() if k != "seed"))


def init_loss(metrics: Mapping[str, Sequence[tuple[int, float]]]) -> float | None:
    """ℓ0 for LR sensitivity: val_loss at step 0 when logged, else the first train_loss."""
    for step, value in metrics.get("val_loss", []):
        if step == 0 and math.isfinite(value):
            return float(value)
    train = sorted(metrics.get("train_loss", []))
    return float(train[0][1]) if train and math.isfinite(train[0][1]) else None


def _final_loss(result: Mapping[str, Any], metrics: Mapping[str, Sequence[tuple[int, float]]]):
    final = (result.get("final_metrics") or {}).get("val_loss")
    if final is None and metrics.get("train_loss"):
        final = sorted(metrics["train_loss"])[-1][1]
    return None if final is None else float(final)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# Options that make an optimizer a variant (docs/optimizers.md): shown beside its name when
# they differ from the default, whether swept or set in the base config.
_VARIANT_DEFAULTS = {"optimizer.decay": "decoupled", "optimizer.decay_to": "zero",
                     "optimizer.cautious": False, "optimizer.gain_decay": 0.0,
                     "model.qk_clip": 0.0, "model.muon_per_head": False,
                     "schedule.wd.kind": "constant"}
# Shown when swept, or when the sweep's base config (e.g. a bench entry such as adamw+wsd)
# sets them to other than these defaults (ScheduleConfig's).
_SCHEDULE_KEYS = {"schedule.kind": "cosine", "schedule.cooldown_shape": "linear"}


def _dotted(tree: Mapping[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def optimizer_label(params: Mapping[str, Any], base: Mapping[str, Any]) -> str:
    """The optimizer's name plus its variant options, e.g. "adamw decay=corrected cautious"."""
    name = str(params.get(_OPT, _dotted(base, _OPT) or "?"))
    parts = [name]
    for key, default in _VARIANT_DEFAULTS.items():
        value = params.get(key, _dotted(base, key))
        if value is None or value == default:
            continue
        short = key.rsplit(".", 1)[-1] if key.startswith(("optimizer.", "model.")) else key
        parts.append(short if value is True else f"{short}={value}")
    for key, default in _SCHEDULE_KEYS.items():
        value = params[key] if key in params else _dotted(base, key)
        if key in params or (value is not None and value != default):
            parts.append(f"{key}={value}")
    return " ".join(parts)


def _trial_views(store: Store, sweep: SweepRecord) -> tuple[list[TrialView], str, bool]:
    """The sweep's trials joined with their runs; plus the metric name and its direction."""
    from wdlab import workloads

    workload = workloads.get(sweep.spec["spec"]["workload"])
    base_opt = (sweep.spec.get("base_config") or {}).get("optimizer", {})
    base_average = ((sweep.spec.get("base_config") or {}).get("train") or {}).get("average")
    views = []
    shown: set[str] = set()
    for trial in store.trials(sweep.id):
        p = trial.params
        # The method: the optimizer (sf_adamw, sf_sgd: Schedule-Free), plus its weight average.
        view = TrialView(
            index=trial.trial_index,
            params=p,
            status=trial.status,
            optimizer=method_label(
                optimizer_label(p, sweep.spec.get("base_config") or {}), p.get(_AVG, base_average)
            ),
            lr=_number(p.get(_LR, base_opt.get("lr"))),
            wd=_number(p.get(_WD, base_opt.get("weight_decay"))),
            seed=p.get("seed"),
            run_id=trial.run_id,
            error=trial.error,
        )
        if trial.run_id is not None:
            try:
                run = store.get_run(trial.run_id)
            except WdlabError:
                run = None
            if run is not None:
                result = run.result or {}
                metrics = store.metrics(run.id)
                # The metric the target is read on (avg_* when it is the weight average's).
                metric = result.get("metric") or workload.metric
                shown.add(metric)
                view.metric_value = (result.get("final_metrics") or {}).get(metric)
                view.reached = result.get("reached")
                view.steps_to_target = result.get("steps_to_target")
                view.seconds_to_target = result.get("seconds_to_target")
                view.final_loss = _final_loss(result, metrics)
                view.init_loss = init_loss(metrics)
                view.curve = list(metrics.get("train_loss", []))
                if trial.status == "diverged":
                    view.final_loss = math.nan
        views.append(view)
    metric = " / ".join(sorted(shown)) if shown else workload.metric
    return views, metric, workload.higher_is_better


# --------------------------------------------------------------------------- heatmaps


@dataclass
class HeatGrid:
    """values[i][j] is the cell (wds[i], lrs[j]): the mean over seeds, NaN when no seed has
    a value; labels[i][j] is the text drawn in the cell."""

    lrs: list[float]
    wds: list[float]
    values: list[list[float]]
    labels: list[list[str]]


def heatmap_grid(trials: Iterable[TrialView], value: str) -> dict[str, HeatGrid]:
    """One LR × WD grid per optimizer of `value` ("metric_value" or "steps_to_target").

    A cell averages the seeds that have a finite value and says "k/n" when only k of its
    n trials did; a cell with none says why: diverged, failed, not reached, or missing
    (no trial at that point, e.g. an unfinished sweep or a Halton sample).
    """
    by_opt: dict[str, list[TrialView]] = defaultdict(list)
    for t in trials:
        if t.lr is not None and t.wd is not None:
            by_opt[t.optimizer].append(t)
    grids = {}
    for opt, rows in sorted(by_opt.items()):
        lrs = sorted({t.lr for t in rows})  # type: ignore[type-var]
        wds = sorted({t.wd for t in rows})  # type: ignore[type-var]
        cells: dict[tuple[float, float], list[TrialView]] = defaultdict(list)
        for t in rows:
            cells[(t.wd, t.lr)].append(t)  # type: ignore[index]
        values, labels = [], []
        for wd in wds:
            vrow, lrow = [], []
            for lr in lrs:
                members = cells.get((wd, lr), [])
                got = [
                    float(v)
                    for t in members
                    if t.status == "finished"
                    and (v := getattr(t, value)) is not None
                    and math.isfinite(float(v))
                ]
                if got:
                    mean = statistics.fmean(got)
                    vrow.append(mean)
                    tail = f" ({len(got)}/{len(members)})" if len(got) < len(members) else ""
                    lrow.append(f"{mean:.3g}{tail}")
                else:
                    vrow.append(math.nan)
                    lrow.append(_why_empty(members))
            values.append(vrow)
            labels.append(lrow)
        grids[opt] = HeatGrid(lrs, wds, values, labels)  # type: ignore[arg-type]
    return grids


def _why_empty(members: list[TrialView]) -> str:
    if not members:
        return "missing"
    statuses = {t.status for t in members}
    for status in ("diverged", "failed", "pending", "running"):
        if status in statuses:
            return status
    return "not reached"


# --------------------------------------------------------------------------- comparisons


@dataclass
class Comparison:
    """The fastest optimizer's best configuration against each other optimizer's best."""

    best: dict[str, tuple[dict[str, Any], list[float]]]  # optimizer -> (params, steps per seed)
    order: list[str]  # fastest first
    statements: list[str]  # plain text, one per pair


def compare_optimizers(trials: Sequence[TrialView], alpha: float = ALPHA) -> Comparison | None:
    """Which optimizer reaches the target in fewer steps, tested over seeds.

    Each optimizer is represented by its configuration with the lowest median steps to
    target over seeds (misses count as ∞). The fastest is tested against each other one
    with scoring's one-sided Welch test on steps; "beats" is said only when p < alpha.
    None when fewer than two optimizers reached the target at all.
    """
    by_config: dict[str, dict[tuple, list[TrialView]]] = defaultdict(lambda: defaultdict(list))
    for t in trials:
        by_config[t.optimizer][t.config_key()].append(t)
    best: dict[str, tuple[dict[str, Any], list[float]]] = {}
    for opt, configs in by_config.items():
        scored = []
        for members in configs.values():
            steps = [
                float(t.steps_to_target)
                if t.reached and t.steps_to_target is not None
                else math.inf
                for t in members
            ]
            scored.append((statistics.median(steps), statistics.fmean(steps), members, steps))
        med, _, members, steps = min(scored, key=lambda s: (s[0], s[1]))
        if math.isfinite(med):
            params = {k: v for k, v in members[0].params.items() if k != "seed"}
            best[opt] = (params, steps)
    if len(best) < 2:
        return None
    order = sorted(best, key=lambda o: (statistics.median(best[o][1]), o))
    lead = order[0]
    statements = []
    for other in order[1:]:
        a, b = best[lead][1], best[other][1]
        test = scoring.one_sided_test(a, b, "less")
        med_a, med_b = statistics.median(a), statistics.median(b)
        head = (
            f"{lead} (median {_fmt(med_a)} steps over {len(a)} seeds) vs {other} "
            f"(median {_fmt(med_b)} steps over {len(b)} seeds): "
        )
        p = _fmt(test.p_value)
        if scoring.beats(a, b, alpha):
            statements.append(head + f"{lead} beats {other} ({test.method}, p={p} < {alpha:g}).")
        elif math.isnan(test.p_value):
            why = test.method.split("not run: ", 1)[-1]
            statements.append(head + f"no significant difference (p=nan: {why}).")
        else:
            statements.append(head + f"no significant difference (p={p}, needs p < {alpha:g}).")
    return Comparison(best, order, statements)


# --------------------------------------------------------------------------- HTML pieces


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]], classes=None) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{_e(classes[i])}"' if classes else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_e(_fmt(v))}</td>" for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv_table(items: Iterable[tuple[str, Any]]) -> str:
    return _table(["field", "value"], list(items))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(_flatten(value, name + "."))
        else:
            out.append((name, json.dumps(value) if isinstance(value, (list, dict)) else value))
    return out


def _page(title: str, body: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _write_atomic(path: Path, text: str) -> Path:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


# --------------------------------------------------------------------------- sweep report


def _sweep_body(store: Store, sweep: SweepRecord, files: Path) -> list[str]:
    views, metric, higher = _trial_views(store, sweep)
    spec = sweep.spec.get("spec", {})
    body = [f"<h1>Sweep {_e(sweep.name)} <small>({_e(sweep.id)})</small></h1>"]
    counts = defaultdict(int)
    for v in views:
        counts[v.status] += 1
    body.append(
        _kv_table(
            [
                ("workload", spec.get("workload")),
                ("status", sweep.status),
                ("created", sweep.created.isoformat(timespec="seconds")),
                ("trials", ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))),
                ("metric", f"{metric} ({'higher' if higher else 'lower'} is better)"),
                ("target", (sweep.spec.get("base_config") or {}).get("target")),
                ("tiny", spec.get("tiny")),
                ("settings", "; ".join(spec.get("assignments", [])) or None),
            ]
        )
    )

    # Table of trials.
    keys = list(dict.fromkeys(k for v in views for k in v.params))
    columns = ["trial", *keys, "status", metric, "reached", "steps to target", "s to target"]
    columns += ["run", "error"]
    rows = [
        [v.index, *(v.params.get(k) for k in keys), v.status, v.metric_value, v.reached]
        + [v.steps_to_target, v.seconds_to_target, v.run_id, v.error]
        for v in views
    ]
    if any(" + " in v.optimizer for v in views):  # a weight average is kept: name the method
        columns.insert(1, "method")
        for row, v in zip(rows, views, strict=True):
            row.insert(1, v.optimizer)
    body += ["<h2>Trials</h2>", _table(columns, rows, [v.status for v in views])]

    title = f"sweep {sweep.name}"
    curves = [(v.optimizer, f"t{v.index}", v.curve) for v in views if v.curve]
    if curves:
        png = report.plot_curves(curves, files / "curves.png", title)
        body += [
            "<h2>Loss curves</h2>",
            '<p class="note">Training loss of every trial, one color per optimizer.</p>',
            _img(png, "training loss of every trial"),
        ]

    body += _heatmaps(views, spec.get("axes", {}), metric, higher, files, title)
    body += _sensitivity(views, files, title)

    comparison = compare_optimizers(views)
    if comparison is not None:
        body.append("<h2>Which optimizer is faster</h2>")
        body.append(
            '<p class="note">Each optimizer by its configuration with the lowest median steps '
            f"to target over seeds (misses count as ∞); one-sided Welch t-test on steps, "
            f"level {ALPHA:g}. A difference is claimed only when the test is significant.</p>"
        )
        rows = [
            [o, json.dumps(comparison.best[o][0], sort_keys=True), statistics.median(s), len(s)]
            for o in comparison.order
            for s in [comparison.best[o][1]]
        ]
        body.append(_table(["optimizer", "best config", "median steps", "seeds"], rows))
        body += [f"<p>{_e(s)}</p>" for s in comparison.statements]
    return body


def _heatmaps(
    views: list[TrialView],
    axes: Mapping[str, Any],
    metric: str,
    higher: bool,
    files: Path,
    title: str,
) -> list[str]:
    if not (axes.keys() >= {_LR, _WD}):  # a heatmap of fixed values says nothing
        return []
    out = []
    for value, label, high in (
        ("metric_value", f"final {metric}", higher),
        ("steps_to_target", "steps to target", False),
    ):
        grids = heatmap_grid(views, value)
        if not grids:
            continue
        out.append(f"<h2>{_e(label)}: learning rate × weight decay</h2>")
        out.append(
            '<p class="note">Mean over seeds; k/n when only k of n seeds have a value; grey '
            "cells say why they are empty (diverged, failed, not reached, missing).</p>"
        )
        for i, (opt, g) in enumerate(grids.items()):
            png = report.plot_heatmap(
                g.lrs, g.wds, g.values, g.labels,
                files / f"heatmap_{value}_{i}_{_slug(opt)}.png",
                f"{title}: {opt}: {label}", label, high,
            )  # fmt: skip
            out.append(_img(png, f"{label} heatmap for {opt}"))
    return out


def _sensitivity(views: list[TrialView], files: Path, title: str) -> list[str]:
    """Final loss vs lr per (optimizer, wd, other axes), with Wortsman's score per line."""
    groups: dict[str, dict[float, list[TrialView]]] = defaultdict(lambda: defaultdict(list))
    for v in views:
        if v.lr is None or v.status not in ("finished", "diverged"):
            continue
        skip = (_LR, _OPT, _WD, "seed", *_VARIANT_DEFAULTS, *_SCHEDULE_KEYS)
        others = {k: x for k, x in v.params.items() if k not in skip}
        label = f"{v.optimizer} wd={_fmt(v.wd)}"
        if others:
            label += " " + " ".join(f"{k}={x}" for k, x in sorted(others.items()))
        groups[label][v.lr].append(v)
    lines, rows, init_all = [], [], []
    for label, by_lr in sorted(groups.items()):
        if len(by_lr) < 2:
            continue
        lrs = sorted(by_lr)
        losses = []
        for lr in lrs:
            vals = [t.final_loss if t.final_loss is not None else math.nan for t in by_lr[lr]]
            # One diverged seed makes the point diverged: the score treats it as ℓ0.
            losses.append(
                math.nan if any(not math.isfinite(x) for x in vals) else statistics.fmean(vals)
            )
        inits = [t.init_loss for ts in by_lr.values() for t in ts if t.init_loss is not None]
        if not inits:
            continue
        l0 = statistics.fmean(inits)
        init_all += inits
        try:
            score = scoring.lr_sensitivity(lrs, losses, l0)
            note = ""
        except ValueError as err:
            score, note = math.nan, str(err)
        if math.isnan(score) and not note:
            note = "no lr in range trained below ℓ0"
        lines.append((f"{label} (S={_fmt(score)})", lrs, losses))
        rows.append([label, len(lrs), f"{min(lrs):.3g}..{max(lrs):.3g}", l0, score, note])
    if not lines:
        return []
    png = report.plot_lr_sensitivity(
        lines, statistics.fmean(init_all), files / "lr_sensitivity.png", title
    )
    lo, hi = scoring.DEFAULT_LR_RANGE
    return [
        "<h2>LR sensitivity</h2>",
        '<p class="note">Final loss (val_loss, else the last train_loss; mean over seeds) '
        "against the learning rate; diverged points are marked x at ℓ0. S (Wortsman et al.) is "
        f"the mean over swept lr in [{lo:g}, {hi:g}] of min(ℓ(lr), ℓ0) − ℓ*, with ℓ0 the loss "
        "at initialization (val_loss at step 0, else the first logged train_loss) and ℓ* the "
        "best loss of the line: lower is more robust.</p>",
        _img(png, "final loss against learning rate"),
        _table(["line", "lrs", "range", "ℓ0", "S", "note"], rows),
    ]


# --------------------------------------------------------------------------- run report


def _run_body(store: Store, run: RunRecord, files: Path) -> list[str]:
    body = [f"<h1>Run {_e(run.name)} <small>({_e(run.id)})</small></h1>"]
    info = [
        ("workload", run.workload),
        ("status", run.status),
        ("seed", run.seed),
        ("created", run.created.isoformat(timespec="seconds")),
        ("sweep", run.sweep_id),
        ("message", run.message),
    ]
    result = run.result or {}
    info += [(k, v) for k, v in result.items() if k not in ("final_metrics", "traceback")]
    info += [(f"final {k}", v) for k, v in sorted((result.get("final_metrics") or {}).items())]
    body += ["<h2>Summary</h2>", _kv_table(info)]
    if isinstance(result.get("traceback"), str):  # a failed run: where it failed
        body += ["<h2>Traceback</h2>", f"<pre>{_e(result['traceback'])}</pre>"]
    metrics = store.metrics(run.id)
    pngs = report.plot_run(metrics, files, title=f"{run.name} ({run.workload})")
    if pngs:
        body.append("<h2>Plots</h2>")
        body += [_img(p, p.stem.replace("_", " ")) for p in pngs]
    else:
        body.append('<p class="note">No metrics recorded.</p>')
    body += ["<h2>Configuration</h2>", _kv_table(_flatten(run.config))]
    body += ["<h2>Versions</h2>", _kv_table(sorted(run.versions.items()))]
    return body


# --------------------------------------------------------------------------- entry point


def build_report(store: Store, ref: str, out: Path) -> Path:
    """Write the report of `ref` (a sweep id, name or id prefix; else a run) to `out`.

    The PNGs go to out.parent / f"{out.stem}_files/"; the HTML embeds them and needs no
    other file. Returns `out`. An unknown ref raises WdlabError naming it.
    """
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise WdlabError(
            f"report output {str(out)!r} must end in .html (e.g. -o report.html)", field="output"
        )
    files = out.parent / f"{out.stem}_files"
    try:
        sweep: SweepRecord | None = store.get_sweep(ref)
    except WdlabError:
        sweep = None
    run: RunRecord | None = None
    if sweep is None:
        try:
            run = store.get_run(ref)
        except WdlabError:
            raise WdlabError(
                f"{ref!r} is neither a sweep nor a run in store {store.path}; "
                "list them with `wdlab runs`",
                field="ref",
            ) from None
    files.mkdir(parents=True, exist_ok=True)  # only once the ref is known: nothing left behind
    if sweep is not None:
        title, body = f"wdlab sweep {sweep.name}", _sweep_body(store, sweep, files)
    else:
        assert run is not None
        title, body = f"wdlab run {run.name}", _run_body(store, run, files)
    body.append(
        f'<p class="note">Written by wdlab; images also in {_e(files.name)}/ beside this file.</p>'
    )
    return _write_atomic(out, _page(title, body))
