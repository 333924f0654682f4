"""`wdlab run WORKLOAD` (the main job) and `wdlab run --resume RUN [--steps N]`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from wdlab.cli import _store, tables
from wdlab.cli._args import (
    DECAY_MODES,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    MAX_SEED,
    finite_float,
    positive_int,
    seed,
    store_option,
)
from wdlab.cli._errors import is_allocation_error
from wdlab.errors import ConfigError, WdlabError

HELP = "train one run of a workload to its target"

def add_arguments(p: argparse.ArgumentParser) -> None:
    from wdlab.cli._config_help import config_keys_help

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog_factory = config_keys_help  # type: ignore[attr-defined]  # built at --help only
    p.add_argument("workload", nargs="?", help="grokking | charlm | digits | teacher, or "
                   "your own as package.module:ClassName (docs/workloads.md)")
    p.add_argument("--optimizer", help="an optimizer name (see wdlab inspect for the list)")
    p.add_argument("--lr", type=finite_float, help="peak learning rate")
    p.add_argument("--wd", type=finite_float, help="weight decay coefficient")
    p.add_argument("--decay", choices=DECAY_MODES)
    p.add_argument("--steps", type=positive_int,
                   help="step budget (with --resume: the run's new, larger budget)")
    p.add_argument("--seed", type=seed)
    p.add_argument("--target", type=finite_float,
                   help="override the workload's validation target")
    p.add_argument("--name", help="a name for the run")
    p.add_argument("--config", help="TOML file with settings (see docs/running.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting, e.g. --set model.placement=peri (repeatable)")
    p.add_argument("--tiny", action="store_true", help="the workload's tiny test configuration")
    p.add_argument("--monitor", choices=["off", "light", "full", "summary"])
    p.add_argument("--log", metavar="LOGGERS",
                   help="also log live to tensorboard,mlflow,wandb (comma-separated; where "
                        "they write: docs/integrations.md)")
    p.add_argument("--on-nonfinite", choices=["stop", "skip"], dest="on_nonfinite")
    p.add_argument("--threads", type=positive_int, help="torch threads")
    p.add_argument("--resume", metavar="RUN",
                   help="continue an interrupted or killed run (only --steps may go with it)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--nproc", type=positive_int,
                   help="train on N local processes (DDP, or FSDP2 with --set "
                        "train.parallel=fsdp), as `torchrun --nproc_per_node N -m wdlab run` does")
    p.add_argument("--print-config", action="store_true", dest="print_config",
                   help="print the resolved config as TOML (a --config file) and exit")
    store_option(p)


def resume_command(run_id: str, store_path: str) -> str:
    """The exact command that continues a run."""
    return f"wdlab run --resume {run_id} --store {store_path}"


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The common flags as dotted settings (None: not given)."""
    return {
        "optimizer.name": args.optimizer,
        "optimizer.lr": args.lr,
        "optimizer.weight_decay": args.wd,
        "optimizer.decay": args.decay,
        "steps": args.steps,
        "seed": args.seed,
        "name": args.name,
        "target": args.target,
        "train.monitor": args.monitor,
        "train.on_nonfinite": args.on_nonfinite,
        "train.threads": args.threads,
        "log.sinks": _log_sinks(args),
    }


def _log_sinks(args: argparse.Namespace) -> list[str] | None:
    from wdlab.monitor.sinks import parse_names

    return parse_names(args.log) if getattr(args, "log", None) else None


def _new_config(args: argparse.Namespace) -> Any:
    from wdlab.config import build_config

    if not args.workload:
        raise ConfigError("name a workload (e.g. `wdlab run grokking`) or --resume RUN")
    config = build_config(
        args.workload, file=args.config, flags=_flags(args), assignments=args.set, tiny=args.tiny
    )
    if config.seed > MAX_SEED:
        raise ConfigError(f"config error: seed: must be at most 2**63-1, got {config.seed}",
                          field="seed")
    return config


def _resume_config(store: Any, args: argparse.Namespace) -> tuple[str, Any]:
    """The stored run's id and config, with --steps as its new budget. Flags and --set may
    only repeat the run's own settings (the engine refuses a changed one, naming it); a
    --config file or --tiny (whole recipes) cannot go with --resume at all."""
    from wdlab import train

    for given, flag in ((args.config, "--config"), (args.tiny, "--tiny")):
        if given:
            raise ConfigError(
                f"--resume continues run {args.resume} with its stored settings, so {flag} "
                "cannot go with it (only --steps N, a new budget, can); start a new run to "
                "change settings",
                field=flag,
            )
    if args.workload:
        stored = store.get_run(args.resume).workload
        if args.workload != stored:
            raise ConfigError(
                f"--resume {args.resume}: that run trains workload {stored!r}, not "
                f"{args.workload!r}; drop WORKLOAD (a resumed run keeps its stored settings)",
                field="workload",
            )
    flags = _flags(args)
    return train.resume_config(store, args.resume, steps=args.steps, flags=flags,
                               assignments=list(args.set))


def _model_settings(config: Any) -> str:
    items = [f"model.{k}={v}" for k, v in sorted(config.model.items())]
    return ", ".join(items) if items else "the workload's default model"


def main(args: argparse.Namespace) -> int:
    from wdlab import parallel

    if args.nproc is not None and args.nproc > 1 and parallel.world_size_from_env() <= 1:
        if not args.resume:
            _new_config(args)  # a bad setting fails here, once, before any rank starts
        return parallel.launch(args.nproc, _without_nproc(sys.argv[1:]))
    session = parallel.start()
    if session is None:
        return _main(args)
    from wdlab.cli._errors import user_message

    def describe(exc: BaseException) -> tuple[int, str | None]:
        if isinstance(exc, KeyboardInterrupt):
            return EXIT_INTERRUPTED, "interrupted"
        line = user_message(exc, args)
        return (EXIT_USAGE, line) if line is not None else (1, None)

    try:
        with parallel.guard(session, describe):
            code = _main(args, session)
    except parallel.PeerFailure as failure:
        print(tables.clean(f"wdlab: error: {failure}"), file=sys.stderr)
        return failure.code
    parallel.stop()
    return code


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line a rank runs: the same, without --nproc N."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == "--nproc":
            skip = True
        elif not token.startswith("--nproc="):
            out.append(token)
    return out


def _main(args: argparse.Namespace, session: Any = None) -> int:
    from wdlab import parallel, train
    from wdlab.progress import make_progress

    if session is not None and not session.is_main:
        return _follow(args, session)
    if args.resume:
        store: Any = _store.open_existing(args.store)
        try:
            run_id, config = _resume_config(store, args)
        except BaseException:
            store.close()
            raise
        if args.print_config:
            store.close()
            return _print_config(config)
    elif args.print_config:
        return _print_config(_new_config(args))
    else:
        config = _new_config(args)  # validated before anything is written
        store = _store.LazyStore(args.store)
        run_id = None
    if session is not None:
        parallel.broadcast((config.to_dict(), run_id))  # the other ranks train this config
        store = parallel.LeaderSink(store)
    label = f"{config.workload}/{config.optimizer.name}"
    progress = make_progress(label, enabled=not args.quiet)
    try:
        with store:
            result = train.run(
                config, store, _store.runs_root(args.store), progress=progress, resume_id=run_id
            )
    except KeyboardInterrupt:  # a second Ctrl-C: stopped mid-step, the last checkpoint holds
        known = run_id or getattr(store, "created_run", None)
        hint = f"; continue with: {resume_command(known, args.store)}" if known else ""
        print(tables.clean(f"wdlab: interrupted{hint}"), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if is_allocation_error(exc):
            raise WdlabError(
                f"out of memory building or training {config.workload} "
                f"({_model_settings(config)}): make the model smaller with --set model.KEY=..."
            ) from exc
        raise
    print_summary(result, args.store)
    if result.status == "interrupted":
        print(tables.clean(f"wdlab: interrupted at step {result.step}; continue with: "
                           f"{resume_command(result.run_id, args.store)}"), file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.status == "diverged":
        print(tables.clean(f"wdlab: diverged: {result.message}"), file=sys.stderr)
        return EXIT_USAGE
    return 0


def _follow(args: argparse.Namespace, session: Any) -> int:
    """A rank other than 0: rank 0's config and run, no store, no output."""
    from wdlab import parallel, train
    from wdlab.config import validate

    tree, run_id = parallel.broadcast(None)
    train.run(validate(tree), parallel.FollowerSink(), _store.runs_root(args.store),
              resume_id=run_id)
    return 0


def _print_config(config: Any) -> int:
    """The resolved settings as TOML, which `--config FILE` reads back; nothing is run."""
    from wdlab._toml import dumps

    sys.stdout.write(dumps(config.to_dict()))
    return 0


def print_summary(result: Any, store_path: str) -> None:
    """What the run reached, in a few lines (stored strings printed as plain text)."""
    say = tables.say
    if result.target is None:
        verdict: Any = "no target"
    else:
        verdict = ("reached", "green") if result.reached else ("not reached", "yellow")
    say("run ", (result.run_id, "bold"), f" {result.status}: target ", verdict)
    if result.target is not None:
        say(f"  target      {result.metric} {_target_op(result)} {result.target:g}")
    if result.reached:
        say(f"  to target   {result.steps_to_target} steps, "
            f"{result.seconds_to_target:.1f} s of training")
    metrics = "  ".join(f"{k} {v:.4g}" for k, v in sorted(result.final_metrics.items()))
    say(f"  final       step {result.step}: {metrics}")
    say(f"  trained     {result.train_seconds:.1f} s (evaluation excluded)")
    if result.message:
        say(f"  note        {result.message}")
    say(f"  store       {store_path}  (wdlab show {result.run_id})")


def _target_op(result: Any) -> str:
    higher = getattr(result, "higher_is_better", None)  # avg_ metrics: the same direction
    if higher is None:
        return "vs"
    return ">=" if higher else "<="
