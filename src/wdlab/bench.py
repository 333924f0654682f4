"""AlgoPerf-style optimizer comparison over the built-in workloads, with external tuning.

For every optimizer and workload: S studies, each a quasi-random (scrambled Halton) search
of N trials over log-uniform lr and weight decay; every trial trains to the workload's
target. A study's time is its fastest trial, the workload's time the median over studies
(scoring.external_tuning_time); across workloads, performance profiles and AlgoPerf scores
with r_max = 4 (scoring.performance_profile / algoperf_score). REFERENCE.md §8.

Every study is an ordinary sweep (sweep.run_sweep) named after what it measures, so its
runs sit in the store and re-running the same command resumes instead of retraining.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wdlab.errors import ConfigError
from wdlab.optim import REGISTRY

__all__ = [
    "FAMILY_RANGES",
    "methods",
    "FAMILY_SETTINGS",
    "VARIANTS",
    "BenchResult",
    "add_arguments",
    "bench_main",
    "run_bench",
    "search_space",
    "split_variant",
]

R_MAX = 4.0
MEASURES = ("seconds", "steps")
DEFAULT_OPTIMIZERS = ("adamw", "lion")
QUICK = {"trials": 3, "studies": 1}
FULL = {"trials": 5, "studies": 3}  # AlgoPerf's external tuning

# Log-uniform search ranges ((lr lo, lr hi), (wd lo, wd hi)) and fixed settings on top of each
# workload's recipe (tuned for AdamW), per optimizer: from wdlab.optim.REGISTRY's entries.
FAMILY_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    name: (e.lr_range, e.wd_range) for name, e in REGISTRY.items()
}
FAMILY_SETTINGS: dict[str, list[str]] = {
    name: list(e.settings) for name, e in REGISTRY.items() if e.settings
}
_ADAM = FAMILY_RANGES["adamw"]

VARIANTS: dict[str, tuple[str, ...]] = {
    "corrected": ("optimizer.decay=corrected",),
    "independent": ("optimizer.decay=independent",),
    "cautious": ("optimizer.cautious=true",),
    "to-init": ("optimizer.decay_to=init",),
    "to-ema": ("optimizer.decay_to=ema",),
    "wsd": ("schedule.kind=wsd",),
    "wsd-sqrt": ("schedule.kind=wsd", "schedule.cooldown_shape=sqrt"),
    "wsd-cosine": ("schedule.kind=wsd", "schedule.cooldown_shape=cosine"),
    "linear": ("schedule.kind=linear",),
    "power": ("schedule.kind=power",),
    "wd-cosine": ("schedule.wd.kind=cosine",),
    "wd-linear": ("schedule.wd.kind=linear",),
    "gains-to-one": ("optimizer.gain_decay=0.1",),
    "qk-clip": ("model.qk_clip=100",),  # Kimi K2's tau (charlm only)
    "per-head": ("model.muon_per_head=true",),  # Muon per attention head (charlm only)
}
"""Options a bench entry adds to its optimizer, written NAME+OPTION[+OPTION...], e.g.
adamw+corrected or lion+cautious+wsd-sqrt: the `--set` settings each option stands for."""


def split_variant(entry: str) -> tuple[str, list[str]]:
    """"adamw+corrected+cautious" -> ("adamw", its settings); ValueError naming a bad option."""
    name, *options = entry.split("+")
    settings: list[str] = []
    for option in options:
        if option not in VARIANTS:
            raise ValueError(
                f"unknown option {option!r} in {entry!r}; known: {', '.join(VARIANTS)}"
            )
        settings += VARIANTS[option]
    return name, settings


def search_space(optimizer: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """The (lr range, wd range) searched for `optimizer`; an unknown family gets AdamW's."""
    entry = REGISTRY.get(optimizer)
    return (entry.lr_range, entry.wd_range) if entry else _ADAM


@dataclass
class BenchResult:
    """Times per optimizer and workload, and the scores built from them.

    trial_times[opt][workload] holds one list of trial times per study (math.inf for a
    trial that missed the target, diverged or failed); times[opt][workload] is the
    external-tuning time (median over studies of the fastest trial), in `measure` units.
    """

    optimizers: list[str]
    workloads: list[str]
    measure: str
    trials: int
    studies: int
    quick: bool
    trial_times: dict[str, dict[str, list[list[float]]]]
    times: dict[str, dict[str, float]]
    scores: dict[str, float]
    profile: dict[str, list[tuple[float, float]]]
    unsolved: list[str]
    sweep_ids: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # trials that raised: not misses
    profile_png: Path | None = None
    r_max: float = R_MAX


QUICK_NOTE = (
    "--quick is a smoke test, NOT a ranking: tiny recipes with their own easy targets, "
    "few trials and one study, so the scores below only show that everything runs; "
    "compare optimizers with the full bench"
)


def _check(optimizers: list[str], workloads: list[str], trials: int, studies: int, workers: int):
    from wdlab import optim
    from wdlab import workloads as wl

    known_opt, known_wl = optim.available(), wl.available()
    if not optimizers:
        raise ConfigError(
            "--optimizers needs at least one name, e.g. adamw,lion", field="optimizers"
        )
    for entry in optimizers:
        try:
            name, _ = split_variant(entry)
        except ValueError as err:
            raise ConfigError(f"--optimizers: {err}", field="optimizers") from None
        if name not in known_opt:
            raise ConfigError(
                f"--optimizers: unknown optimizer {name!r}; known: {', '.join(known_opt)} "
                f"(options: NAME+{'|'.join(VARIANTS)})",
                field="optimizers",
            )
    if not workloads:
        raise ConfigError("--workloads needs at least one name, e.g. teacher", field="workloads")
    for name in workloads:
        if name not in known_wl:
            try:
                wl.get(name)  # a user's package.module:ClassName, or a did-you-mean
            except ValueError as err:
                raise ConfigError(f"--workloads: {err}", field="workloads") from None
    for flag, value in (("--trials", trials), ("--studies", studies), ("--workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{flag} must be an integer >= 1, got {value!r}", field=flag[2:])
    if len(set(optimizers)) < len(optimizers) or len(set(workloads)) < len(workloads):
        raise ConfigError("--optimizers and --workloads must not repeat a name", field="optimizers")


def methods(optimizers: list[str], averages: list[str] | None) -> list[tuple[str, str, str]]:
    """(label, optimizer, average) for every optimizer × weight average compared: the label is
    the optimizer's name, plus " + SPEC" when a train.average is kept (wdlab.averaging)."""
    from wdlab.averaging import canonical, label

    specs: list[str] = []
    for text in averages or ["off"]:
        try:
            spec = canonical(text)
        except ValueError as err:
            raise ConfigError(f"--average: {err}", field="average") from None
        if spec in specs:
            raise ConfigError("--average must not repeat a spec", field="average")
        specs.append(spec)
    return [(label(opt, avg), opt, avg) for opt in optimizers for avg in specs]


def _spec(entry: str, workload: str, trials: int, study: int, quick: bool,
          average: str = "off"):
    from wdlab.sweep import RangeSpec, SweepSpec

    optimizer, variant = split_variant(entry)
    (lr_lo, lr_hi), (wd_lo, wd_hi) = search_space(optimizer)
    tag = "quick" if quick else "full"
    settings = list(REGISTRY[optimizer].settings) if optimizer in REGISTRY else []
    settings += variant
    if average != "off":
        settings.append(f"train.average={average}")
    return SweepSpec.create(
        workload=workload,
        axes={
            "optimizer.name": [optimizer],
            "optimizer.lr": RangeSpec(lo=lr_lo, hi=lr_hi),
            "optimizer.weight_decay": RangeSpec(lo=wd_lo, hi=wd_hi),
        },
        seeds=[study],  # a study differs in its sample AND its training seed
        sample="halton",
        n_trials=trials,
        sample_seed=study,
        tiny=quick,
        assignments=settings,
        name=f"bench-{tag}-{workload}-{entry}{'' if average == 'off' else '-' + average}"
        f"-n{trials}-s{study}",
    )


def _trial_time(row: Any, measure: str) -> float:
    if row.status != "finished" or not row.reached:
        return math.inf
    value = row.seconds_to_target if measure == "seconds" else row.steps_to_target
    if value is None:
        return math.inf
    # A target met at the first evaluation in 0 s would break the ratio t / t_best.
    return max(float(value), 1e-9)


def estimate(workloads: list[str], n_runs_per_workload: int, quick: bool) -> str:
    """What the bench will train, in trials and step budgets (trials stop at the target)."""
    from wdlab import workloads as wl

    parts, total_steps = [], 0
    for name in workloads:
        steps = int(wl.get(name).recipe(tiny=quick)["steps"])
        total_steps += steps * n_runs_per_workload
        parts.append(f"{name} {n_runs_per_workload}×≤{steps}")
    runs = n_runs_per_workload * len(workloads)
    return f"{runs} trials ({', '.join(parts)} steps; at most {total_steps} steps in all)"


def run_bench(
    optimizers: list[str],
    workloads: list[str],
    store_path: Path,
    *,
    trials: int,
    studies: int,
    quick: bool,
    workers: int,
    measure: str = "seconds",
    out_dir: Path | None = None,
    progress: bool = True,
    stream: Any = None,
    averages: list[str] | None = None,
) -> BenchResult:
    """Run (or resume) every study, then score. The profile PNG goes to out_dir (default:
    beside the store) as bench_profile.png. `averages` (train.average specs, default just
    "off") multiply the optimizers: each pair is scored as its own method, labelled
    "optimizer + spec" (BenchResult.optimizers holds these labels)."""
    from wdlab import scoring
    from wdlab.report import plot_profile
    from wdlab.sweep import run_sweep

    stream = stream or sys.stdout
    _check(optimizers, workloads, trials, studies, workers)
    if measure not in MEASURES:
        raise ConfigError(
            f"--measure {measure!r} is not known; use seconds or steps", field="measure"
        )
    store_path = Path(store_path)
    compared = methods(optimizers, averages)
    n_sweeps = len(compared) * len(workloads) * studies
    print(
        f"bench: {len(compared)} methods × {len(workloads)} workloads × {studies} studies "
        f"× {trials} trials = "
        + estimate(workloads, len(compared) * studies * trials, quick)
        + f"; time to target in {measure}",
        file=stream,
        flush=True,
    )
    if quick:
        print(QUICK_NOTE, file=stream, flush=True)
    trial_times: dict[str, dict[str, list[list[float]]]] = {}
    sweep_ids: dict[str, dict[str, list[str]]] = {}
    failures: list[str] = []
    k = 0
    for workload in workloads:
        for opt, name, average in compared:
            for study in range(studies):
                k += 1
                spec = _spec(name, workload, trials, study, quick, average)
                print(f"[{k}/{n_sweeps}] {spec.name}", file=stream, flush=True)
                summary = run_sweep(spec, store_path, workers=workers, progress=progress)
                times = [_trial_time(t, measure) for t in summary.trials]
                failures += [
                    f"{spec.name} trial {t.index}: {t.error}"
                    for t in summary.trials
                    if t.status == "failed"
                ]
                trial_times.setdefault(opt, {}).setdefault(workload, []).append(times)
                sweep_ids.setdefault(opt, {}).setdefault(workload, []).append(summary.sweep_id)
    times = {
        opt: {w: scoring.external_tuning_time(trial_times[opt][w]) for w in workloads}
        for opt, _, _ in compared
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the unsolved list is reported instead
        ratios = scoring.performance_ratios(times, R_MAX)
        scores = scoring.algoperf_score(times, R_MAX)
        profile = scoring.performance_profile(times, r_max=R_MAX)
    out = Path(out_dir) if out_dir is not None else store_path.resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    png = plot_profile(
        profile,
        out / "bench_profile.png",
        f"{'quick ' if quick else ''}bench: {', '.join(ratios.workloads) or 'no solved workload'}",
        R_MAX,
    )
    return BenchResult(
        optimizers=[label for label, _, _ in compared],
        workloads=list(workloads),
        measure=measure,
        trials=trials,
        studies=studies,
        quick=quick,
        trial_times=trial_times,
        times=times,
        scores=scores,
        profile=profile,
        unsolved=ratios.unsolved,
        sweep_ids=sweep_ids,
        failures=failures,
        profile_png=png,
    )


# --------------------------------------------------------------------------- CLI glue


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `wdlab bench` options (the CLI adds --store itself)."""
    p.add_argument(
        "--optimizers",
        default=",".join(DEFAULT_OPTIMIZERS),
        metavar="NAMES",
        help=f"optimizers to compare (default {','.join(DEFAULT_OPTIMIZERS)}); NAME+OPTION "
        f"adds an option ({', '.join(VARIANTS)}), e.g. adamw+corrected",
    )
    p.add_argument(
        "--workloads", metavar="NAMES", help="workloads to run (default: all built-in ones)"
    )
    p.add_argument(
        "--average",
        metavar="SPECS",
        help="weight averages to compare, each with every optimizer, e.g. off,ema:0.999 "
        "(train.average specs, docs/running.md; default off)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke test, not a ranking: tiny recipes, {QUICK['trials']} trials × "
        f"{QUICK['studies']} study (minutes on a laptop)",
    )
    p.add_argument(
        "--trials",
        type=int,
        help=f"trials per study (default {FULL['trials']}, quick {QUICK['trials']})",
    )
    p.add_argument(
        "--studies", type=int, help=f"studies (default {FULL['studies']}, quick {QUICK['studies']})"
    )
    p.add_argument("--workers", type=int, default=1, help="trials trained at once")
    p.add_argument(
        "--measure",
        choices=MEASURES,
        default="seconds",
        help="time to target in training seconds (AlgoPerf) or steps (reproducible)",
    )
    p.add_argument("--out-dir", dest="out_dir", help="where bench_profile.png goes")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def _names(text: str | None, default: list[str]) -> list[str]:
    if text is None:
        return default
    return [n.strip() for n in text.split(",") if n.strip()]


def print_result(result: BenchResult, stream: Any = None) -> None:
    """Times per workload and the scores, as aligned text."""
    stream = stream or sys.stdout
    unit = "s" if result.measure == "seconds" else "steps"
    header = ["optimizer", *result.workloads, "score"]
    rows = [
        [opt]
        + [
            "miss" if math.isinf(result.times[opt][w]) else f"{result.times[opt][w]:.4g} {unit}"
            for w in result.workloads
        ]
        + [f"{result.scores[opt]:.3f}"]
        for opt in result.optimizers
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    if result.quick:
        print("quick bench (smoke test, not a ranking):", file=stream)
    print(
        f"time to target ({unit}, median over {result.studies} studies of the fastest of "
        f"{result.trials} trials) and AlgoPerf score (r_max {result.r_max:g}):",
        file=stream,
    )
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)), file=stream)
    if result.unsolved:
        print(f"no optimizer reached the target on: {', '.join(result.unsolved)}", file=stream)
    if result.failures:
        print(
            f"{len(result.failures)} trials FAILED (counted as misses; fix and re-run to "
            "retrain only them after deleting their sweeps):",
            file=stream,
        )
        for line in result.failures[:10]:
            print(f"  {line}", file=stream)
    if result.profile_png is not None:
        print(f"performance profile: {result.profile_png}", file=stream)


def bench_main(args: argparse.Namespace) -> int:
    """`wdlab bench`: run or resume the comparison and print times and scores."""
    from wdlab import workloads as wl

    preset = QUICK if args.quick else FULL
    result = run_bench(
        _names(args.optimizers, list(DEFAULT_OPTIMIZERS)),
        _names(args.workloads, wl.available()),
        Path(getattr(args, "store", None) or "wdlab.db"),
        trials=args.trials if args.trials is not None else preset["trials"],
        studies=args.studies if args.studies is not None else preset["studies"],
        quick=args.quick,
        workers=args.workers,
        measure=args.measure,
        out_dir=Path(args.out_dir) if args.out_dir else None,
        progress=not args.quiet,
        averages=_names(getattr(args, "average", None), ["off"]),
    )
    print_result(result)
    return 0
