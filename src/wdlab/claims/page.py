"""The claims report: one self-contained HTML page per claim, an index, and a Markdown table.

The pages reuse wdlab.html_report's pieces (escaping, tables, embedded PNGs, atomic writes):
every stored string (trial errors, params, metric names) is escaped on its way in; numbers
are formatted here. README.md is the table docs/claims/ keeps: claim, source, setup,
statistic, p-value, verdict, with a link to each page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wdlab import report
from wdlab.claims.base import Claim
from wdlab.claims.runner import Outcome, arm_spec
from wdlab.html_report import _e, _img, _kv_table, _page, _slug, _table, _write_atomic


def _p(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3g}"


def _interval(ci: Sequence[float]) -> str:
    lo, hi = ci
    if math.isnan(lo) and math.isnan(hi):
        return "–"
    return f"[{lo:.4g}, {hi:.4g}]"


def _curves(outcome: Outcome, store: Any, files: Path) -> list[str]:
    """The evaluation metric of every trial of every arm, one colour per grid point."""
    from wdlab import workloads
    from wdlab.errors import WdlabError

    out = []
    if store is None:
        return out
    for arm in outcome.claim.arms(outcome.quick):
        try:
            sweep = store.get_sweep(arm_spec(outcome.claim, arm, outcome.quick).name)
        except WdlabError:  # an arm that never ran has no curves
            continue
        metric = workloads.get(arm.workload).metric
        curves = []
        for t in store.trials(sweep.id):
            if t.run_id is None:
                continue
            series = store.metrics(t.run_id, [metric]).get(metric, [])
            point = ", ".join(f"{k}={v}" for k, v in t.params.items() if k != "seed")
            curves.append((point or arm.key, f"t{t.trial_index}", series))
        if any(series for _, _, series in curves):
            png = report.plot_curves(curves, files / f"curves_{_slug(arm.key)}.png",
                                     f"{outcome.claim.name}: {arm.key}", metric)  # fmt: skip
            out.append(_img(png, f"{metric} of every trial of arm {arm.key}"))
    return out


def claim_page(outcome: Outcome, store: Any, out_dir: Path) -> Path:
    """Write `<claim>.html` (PNGs in `<claim>_files/`) and return its path."""
    claim = outcome.claim
    files = out_dir / f"{claim.name}_files"
    files.mkdir(parents=True, exist_ok=True)
    budget = "quick (checks the machinery, not the verdict)" if outcome.quick else "full"
    body = [
        f"<h1>{_e(claim.title)}</h1>",
        _kv_table([
            ("claim", claim.name), ("source", claim.source), ("statement", claim.statement),
            ("status", outcome.status + (f": {outcome.detail}" if outcome.detail else "")),
            ("p-value (largest Holm-adjusted)", _p(outcome.p_value())),
            ("budget", f"{budget}: {claim.budget(outcome.quick)}"),
            ("trials", ", ".join(f"{k} {v}" for k, v in sorted(outcome.counts.items()))),
            ("reproduce", f"wdlab claims run {claim.name}" + (" --quick" if outcome.quick
                                                               else "")),
        ]),  # fmt: skip
        "<h2>Setup</h2>",
        _table(["arm (sweep)", "setup"], [
            (f"{key} ({arm_spec(claim, arm, outcome.quick).name})", text)
            for (key, text), arm in zip(claim.setup(outcome.quick), claim.arms(outcome.quick),
                                        strict=True)
        ]),  # fmt: skip
        "<h2>Statistic and test</h2>",
        f"<p><b>Statistic.</b> {_e(claim.statistic)}</p>",
        f"<p><b>Test.</b> {_e(claim.test)} Level 0.05; seeds are the samples. The interval is "
        "the one-sided 95% confidence interval of the effect (it excludes 0 exactly when the "
        "uncorrected test is significant).</p>",
    ]
    evidence = outcome.evidence
    if evidence is not None:
        rows = [[t.label, t.method, t.effect, _interval(t.ci), t.statistic, _p(t.p_value),
                 _p(t.p_adjusted), t.n] for t in evidence.tests]  # fmt: skip
        body += [
            "<h2>Tests</h2>",
            _table(["comparison", "method", "effect", "95% CI (one-sided)", "t", "p",
                    "p (Holm)", "n"], rows),
            f"<p><b>Verdict: {_e(evidence.verdict)}.</b></p>",
        ]  # fmt: skip
        if evidence.rows:
            body += ["<h2>Per seed</h2>", _table(evidence.columns, evidence.rows)]
        body += [f'<p class="note">{_e(n)}</p>' for n in evidence.notes]
        for draw in evidence.plots:
            body += [_img(p, p.stem.replace("_", " ")) for p in draw(files)]
    curves = _curves(outcome, store, files)
    if curves:
        body += ["<h2>Curves</h2>", *curves]
    path = out_dir / f"{claim.name}.html"
    return _write_atomic(path, _page(f"wdlab claim {claim.name}", body))


README_HEAD = """# Claims

Every claim about weight decay, normalization and LR scale that wdlab implements, re-run in
one command and judged over seeds (wdlab.claims; `wdlab claims list` shows the budgets).

    wdlab claims run NAME            # train its sweeps (resumable: the same command continues)
    wdlab claims run all --quick     # every claim at a CI-sized budget (checks the machinery)
    wdlab claims report -o DIR       # this table, index.html and one page per claim

Seeds are the samples; each comparison is a one-sided t-test (paired where the arms share
seeds) with its effect and one-sided 95% confidence interval, Holm-corrected where a claim
compares several arms. Verdict: *reproduces* (every comparison significant at 0.05 after
Holm), *does not reproduce* (a comparison significant in the opposite direction) or
*inconclusive at this budget*; the p-value column is the largest Holm-adjusted p. A claim
whose feature is not in wdlab yet says what it needs.

"""


def _md(text: Any) -> str:
    """A Markdown table cell: pipes escaped, one line."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_report(outcomes: Sequence[Outcome], store: Any, out_dir: Path) -> list[Path]:
    """Every claim's page, index.html and README.md in `out_dir`; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [claim_page(o, store, out_dir) for o in outcomes]
    have_page = {p.stem for p in written}
    rows, md = [], [
        "| claim | source | setup | statistic | p-value | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        c: Claim = o.claim
        status = o.status + (f" ({o.detail})" if o.detail and o.evidence is None else "")
        if o.quick and o.evidence is not None:
            status += " (quick budget)"
        link = f"[{c.name}]({c.name}.html)" if c.name in have_page else c.name
        md.append("| " + " | ".join(_md(x) for x in (
            link, c.source, c.budget(o.quick), c.statistic, _p(o.p_value()), status)) + " |")
        cell = (f'<a href="{_e(c.name)}.html">{_e(c.name)}</a>' if c.name in have_page
                else _e(c.name))  # fmt: skip
        rows.append(f"<tr><td>{cell}</td><td>{_e(c.title)}</td><td>{_e(c.source)}</td>"
                    f"<td>{_e(_p(o.p_value()))}</td><td>{_e(status)}</td></tr>")
    index = [
        "<h1>wdlab claims</h1>",
        '<p class="note">Each claim is re-run with `wdlab claims run NAME`; seeds are the '
        "samples of one-sided tests, Holm-corrected where a claim compares several arms.</p>",
        "<table><thead><tr><th>claim</th><th>title</th><th>source</th><th>p-value</th>"
        f"<th>verdict</th></tr></thead><tbody>{''.join(rows)}</tbody></table>",
    ]
    written.append(_write_atomic(out_dir / "index.html", _page("wdlab claims", index)))
    written.append(_write_atomic(out_dir / "README.md", README_HEAD + "\n".join(md) + "\n"))
    return written
