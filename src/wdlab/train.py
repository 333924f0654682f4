"""The training loop: one readable function from config to a stored, scored run.

    workload -> model -> groups -> optimizer -> for each step: lr, batch, loss, backward,
    clip, step, monitor, log; evaluate every N steps (timer paused, the AlgoPerf way);
    checkpoint atomically; stop at the target, the step budget or the time budget.

Determinism: data is a pure function of (seed, step), the model's init depends only on the
seed, the schedule only on the step, and checkpoints carry the torch RNG state, so a resumed
run ends bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import copy
import math
import signal
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from wdlab import averaging, parallel, workloads
from wdlab import checkpoint as checkpoint_io
from wdlab._compat import total_norm
from wdlab.config import RunConfig, parse_assignment, set_dotted, validate
from wdlab.errors import ConfigError, WdlabError, stored_traceback
from wdlab.evaluation import Evaluator
from wdlab.factory import create_optimizer
from wdlab.lease import LEASE_BEAT_SECONDS, current_owner
from wdlab.optim.schedule_free import swap_to
from wdlab.schedules import Schedule

CHECKPOINT_FORMAT = checkpoint_io.FORMAT
MAX_SKIPS_IN_A_ROW = 50  # with on_nonfinite=skip, more than this in a row is divergence


class Progress(Protocol):
    """What the loop reports to a display (rich bar, plain lines, or nothing)."""

    def start(self, total: int, initial: int) -> None: ...
    def update(self, step: int, fields: dict[str, float]) -> None: ...
    def stop(self) -> None: ...


class NoProgress:
    def start(self, total: int, initial: int) -> None:
        pass

    def update(self, step: int, fields: dict[str, float]) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclass
class RunResult:
    run_id: str
    status: str  # finished | diverged | interrupted
    step: int
    target: float | None
    metric: str
    reached: bool = False
    steps_to_target: int | None = None
    seconds_to_target: float | None = None
    train_seconds: float = 0.0
    final_metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    checkpoint: str | None = None
    higher_is_better: bool | None = None  # the metric's direction, for display
    traceback: str | None = None  # a failed run's (user-frames) traceback, kept in its result

    def summary(self) -> dict[str, Any]:
        """The JSON stored as the run's result."""
        return {
            "status": self.status,
            "step": self.step,
            "target": self.target,
            "metric": self.metric,
            "reached": self.reached,
            "steps_to_target": self.steps_to_target,
            "seconds_to_target": self.seconds_to_target,
            "train_seconds": self.train_seconds,
            "final_metrics": self.final_metrics,
            **({"traceback": self.traceback} if self.traceback else {}),
        }


def lr_multiplier(step: int, total: int, kind: str, warmup: int, final: float = 0.0) -> float:
    """Schedule multiplier s_t for 0-based `step` (wdlab.schedules.Schedule, the one formula)."""
    return Schedule(kind, total, warmup, final)(step)


def schedules_of(config: RunConfig) -> tuple[Schedule, Schedule]:
    """The run's lr and weight-decay schedules (config.schedule, config.schedule.wd)."""
    sched, wd = config.schedule, config.schedule.wd
    lr = Schedule(sched.kind, config.steps, sched.warmup, sched.final_lr_fraction,
                  sched.cooldown, sched.cooldown_shape, sched.power)
    return lr, Schedule(wd.kind, config.steps, wd.warmup, wd.final, wd.cooldown,
                        wd.cooldown_shape, wd.power)


@contextmanager
def _interrupt_flag() -> Iterator[dict[str, bool]]:
    """First Ctrl-C asks the loop to checkpoint and stop between steps; a second one aborts."""
    flag = {"stop": False}
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: Ctrl-C handling stays as it was
        previous = None
    try:
        yield flag
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _make_monitor(config: RunConfig, model: torch.nn.Module, optimizer: Any, sink: Any) -> Any:
    if config.train.monitor == "off":
        return None
    from wdlab.monitor import Monitor

    return Monitor(
        model, optimizer, every=config.train.monitor_every, sink=sink, level=config.train.monitor
    )


class RunSink(Protocol):
    """Where a run's record and metrics go (wdlab.store.Store is one; a sweep worker wraps
    it). `flush()` is the commit point: when it returns, every metric logged so far
    survives a kill, and the loop calls it right before each checkpoint."""

    def create_run(
        self,
        *,
        workload: str,
        config: Mapping[str, Any],
        seed: int,
        name: str | None = None,
        data_hash: str | None = None,
        owner: str | None = None,
    ) -> str: ...
    def get_run(self, ref: str) -> Any: ...
    def claim_run(self, run_id: str, owner: str) -> None: ...
    def heartbeat_run(self, run_id: str, owner: str) -> bool: ...
    def update_run(
        self,
        run_id: str,
        *,
        status: str | None = None,
        result: Mapping[str, Any] | None = None,
        message: str | None = None,
        config: Mapping[str, Any] | None = None,
        release: str | None = None,
    ) -> None: ...
    def log_metrics(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None: ...
    def truncate_metrics(self, run_id: str, after_step: int) -> int: ...
    def flush(self) -> None: ...


class _NonFiniteState(Exception):
    """Raised by checkpoint(): the state to be written holds NaN or inf."""


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def _check_resume_config(run_id: str, stored: dict[str, Any], config: RunConfig) -> None:
    """A resumed run keeps its settings; only the step budget may grow."""
    changed = _changed_keys(validate(stored).to_dict(), config.to_dict())
    changed = [key for key in changed
               if key not in ("steps", "train.parallel") and not key.startswith("log.")]
    if changed:
        raise ConfigError(
            f"--resume continues run {run_id} with its own settings, but "
            f"{', '.join(changed)} differ; only --steps may change (to extend the budget): "
            "drop the other flags, or start a new run to change them",
            field=changed[0],
        )


def run(
    config: RunConfig,
    store: RunSink,
    runs_root: Path,
    *,
    progress: Progress | None = None,
    resume_id: str | None = None,
    steps: int | None = None,
) -> RunResult:
    """Train one run to its target or budget; everything is written to `store` and `runs_root`.

    With `resume_id` the run continues from its last checkpoint (from step 0 when it was
    killed before its first one); `steps` (or a larger `config.steps`) extends its budget,
    any other changed setting is refused. Refused too while another live process trains it.
    """
    if steps is not None:
        config = config.model_copy(update={"steps": steps})
        config = validate(config.to_dict())
    progress = progress or NoProgress()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    workload = workloads.from_config(config)
    target = config.target
    torch.manual_seed(config.seed)
    model = workload.build_model()
    try:
        optimizer = create_optimizer(
            model,
            config.optimizer.name,
            lr=config.optimizer.lr,
            example_input=workload.example_input(),
            decay_embedding=config.optimizer.decay_embedding,
            decay_output=config.optimizer.decay_output,
            scaling=config.optimizer.scaling,
            base_width=config.optimizer.base_width,
            width=workload.width if config.optimizer.scaling else None,
            **config.optimizer.hyperparameters(),
        )
        if config.optimizer.wrapper == "rotational":
            from wdlab.optim.wrappers import RotationalWrapper

            optimizer = RotationalWrapper(optimizer)
    except (ValueError, TypeError) as err:  # bad name or hyperparameter: the user's to fix
        if not workloads.is_builtin(config.workload):  # or their model failed in the probe
            from wdlab.workloads.user import from_probe

            theirs = from_probe(config.workload, err)
            if theirs is not None:
                raise theirs from None
        raise ConfigError(f"config error: optimizer: {err}", field="optimizer") from None
    if config.optimizer.gain_decay:
        _decay_gains_to_one(optimizer, config.optimizer.gain_decay)
    if config.optimizer.cautious:
        from wdlab.optim.wrappers import CautiousUpdate

        optimizer = CautiousUpdate(optimizer)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group.setdefault("initial_weight_decay", group["weight_decay"])
    lr_schedule, wd_schedule = schedules_of(config)
    # `net` trains (DDP or FSDP2 under torchrun); `model` is what is saved and evaluated.
    net, optimizer = parallel.wrap(model, optimizer, config.train.parallel)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # Schedule-Free optimizers train at y; Evaluator swaps to x for evaluations and back, so
    # checkpoints are always written in train mode (exact resume). The weight average
    # (train.average) is kept beside the raw weights and saved in the checkpoint.
    swap_to(optimizer, "train")
    average = averaging.from_config(config.train.average, model, config.steps)
    evaluate_weights = Evaluator(
        workload, model, optimizer, average, raw=config.train.eval_raw,
        target_weights="average" if config.train.target_on_average() else "raw",
        bn_batches=config.train.bn_batches,
    )

    if config.log.sinks and parallel.is_main():  # live loggers mirror the store's rows
        from wdlab.monitor.sinks import LiveRunSink

        store = LiveRunSink(store, config.log, runs_root, config.to_dict())
    owner = current_owner()
    result = RunResult(
        run_id="", status="running", step=0, target=target, metric=evaluate_weights.metric,
        higher_is_better=workload.higher_is_better,
    )
    start_step, skipped = 0, 0
    resumed_done = False
    if resume_id is None:
        result.run_id = store.create_run(
            workload=config.workload,
            config=config.to_dict(),
            seed=config.seed,
            name=config.name,
            data_hash=workload.data_hash(),
            owner=owner,
        )
        store.claim_run(result.run_id, owner)
    else:
        # Everything is checked before the run is claimed: a refused resume changes nothing.
        record = store.get_run(resume_id)
        result.run_id = run_id = record.id
        stored_hash = record.data_hash
        if stored_hash and stored_hash != workload.data_hash():
            raise WdlabError(
                f"run {run_id} was trained on different data (hash {stored_hash[:12]}, now "
                f"{workload.data_hash()[:12]}; charlm's corpus changes between Python "
                "versions); resume it with the Python it started with, or start a new run"
            )
        _check_resume_config(run_id, record.config, config)
        path = parallel.latest_checkpoint(runs_root / run_id)
        if path is not None:
            payload = parallel.read_checkpoint(path, run_id, model, optimizer)
            reached_step, stored_steps = payload["step"], record.config.get("steps")
            if config.steps < reached_step <= (stored_steps or 0):  # a smaller budget asked
                raise ConfigError(
                    f"--steps {config.steps} is below step {reached_step} that run {run_id} "
                    f"has reached; give --steps N with N >= {reached_step}",
                    field="steps",
                )
            checkpoint_io.restore(path, payload, run_id, model, optimizer, config.steps)
            if average is not None:
                checkpoint_io.restore_average(path, payload, run_id, average)
            start_step, skipped = payload["step"], payload["skipped"]
            saved = payload["progress"]
            for key in ("reached", "steps_to_target", "seconds_to_target", "train_seconds"):
                setattr(result, key, saved.get(key, getattr(result, key)))
            result.final_metrics = dict(saved.get("final_metrics") or {})
            result.message = str(saved.get("message") or "")
            resumed_done = bool(saved.get("finished")) and _reached_the_end(
                config, start_step, result
            )
        store.claim_run(run_id, owner)
        # The checkpoint is the commit point: rows a killed process logged after it go, and
        # the steps after it are logged again, so the rows equal an uninterrupted run's.
        store.truncate_metrics(run_id, start_step if path is not None else -1)
        if config.steps != record.config.get("steps"):
            store.update_run(run_id, config=config.to_dict())
    checkpoint_path = parallel.checkpoint_path(runs_root / result.run_id)
    parallel.remove_stale(checkpoint_path.parent)  # left by killed writers; the run is ours

    def checkpoint(step: int, finished: bool = False) -> None:
        bad = parallel.first_of_ranks(checkpoint_io.first_nonfinite(model, optimizer, average))
        if bad is not None:
            raise _NonFiniteState(bad)
        store.flush()  # every row up to this step is durable before the checkpoint exists
        written = parallel.save_checkpoint(
            checkpoint_path.parent,
            {
                "format": checkpoint_io.FORMAT,
                "run_id": result.run_id,
                "step": step,
                "skipped": skipped,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                **({"average": average.state_dict()} if average is not None else {}),
                "progress": {
                    "reached": result.reached,
                    "steps_to_target": result.steps_to_target,
                    "seconds_to_target": result.seconds_to_target,
                    "train_seconds": result.train_seconds,
                    "final_metrics": dict(result.final_metrics),
                    "finished": finished,
                    "message": result.message,
                },
            },
        )
        result.checkpoint = str(written)
        store.heartbeat_run(result.run_id, owner)

    def log(step: int, metrics: dict[str, float]) -> None:
        store.log_metrics(result.run_id, step, metrics)

    def evaluate(step: int) -> bool:
        """Evaluate (not timed), log, and record the first time the target is reached."""
        # every rank decides on rank 0's numbers
        result.final_metrics = parallel.broadcast(evaluate_weights(step))
        log(step, {**result.final_metrics, "train_seconds": result.train_seconds})
        value = result.final_metrics[evaluate_weights.metric]
        if target is not None and not result.reached and workload.reached(value, target):
            result.reached = True
            result.steps_to_target = step
            result.seconds_to_target = result.train_seconds
        return result.reached

    def nonfinite_state(step: int, what: str) -> None:
        result.status = "diverged"
        result.message = (
            f"the model or optimizer state became non-finite ({what}) by step {step}; lower "
            "--lr or set --set train.clip=1.0"
        )
        if checkpoint_path.exists():
            result.message += f" (last good checkpoint: {checkpoint_path})"

    monitor = _make_monitor(config, model, optimizer, log)
    from wdlab.nn.qk_clip import apply_qk_clip, clipped_modules

    qk_clipped = clipped_modules(model)  # model.qk_clip > 0: QK-Clip after every step
    tcfg = config.train
    step, last_eval, consecutive_skips = start_step, -1, 0
    if resumed_done:
        last_eval = step  # killed after its final checkpoint: nothing is left to train
    progress.start(config.steps, start_step)
    clean_exit = False
    last_checkpoint = last_beat = time.monotonic()
    try:
        with _interrupt_flag() as interrupt:
            while step < config.steps and not resumed_done:
                if parallel.stop_requested(interrupt):
                    result.status = "interrupted"
                    result.message = (
                        f"interrupted at step {step}; continue with "
                        f"`wdlab run --resume {result.run_id}`"
                    )
                    break
                tick = time.perf_counter()
                multiplier, wd_multiplier = lr_schedule(step), wd_schedule(step)
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * multiplier
                    # A checkpoint from before wd schedules has no initial_weight_decay: its
                    # weight_decay was never scheduled, so it is the initial one.
                    initial_wd = group.setdefault("initial_weight_decay", group["weight_decay"])
                    group["weight_decay"] = initial_wd * wd_multiplier
                if monitor is not None:
                    monitor.before_forward(step + 1)  # steps are logged 1-based
                loss = workload.loss(net, parallel.local_batch(workload.batch(step)))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tcfg.clip is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.clip)
                else:
                    grad_norm = total_norm([p.grad for p in params if p.grad is not None])
                loss_value, norm_value = parallel.step_values(loss, grad_norm)
                if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                    consecutive_skips += 1
                    if tcfg.on_nonfinite == "stop" or consecutive_skips > MAX_SKIPS_IN_A_ROW:
                        result.status = "diverged"
                        result.message = _divergence_message(
                            step, loss_value, norm_value, consecutive_skips, checkpoint_path
                        )
                        log(step, {"train_loss": loss_value, "grad_norm": norm_value})
                        break
                    skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    result.train_seconds += time.perf_counter() - tick
                    log(step, {"skipped_steps": float(skipped)})
                    continue
                consecutive_skips = 0
                optimizer.step()
                if qk_clipped:
                    apply_qk_clip(qk_clipped)
                if monitor is not None:
                    monitor.step()
                step += 1
                if average is not None:
                    average.update(step)
                result.train_seconds += time.perf_counter() - tick
                if step % tcfg.log_every == 0:
                    lr_now = optimizer.param_groups[0]["lr"]
                    log(step, {"train_loss": loss_value, "grad_norm": norm_value, "lr": lr_now})
                fields = {"loss": loss_value}
                out_of_time = (
                    tcfg.max_seconds is not None and result.train_seconds >= tcfg.max_seconds
                )
                if step % tcfg.eval_every == 0 or step == config.steps or out_of_time:
                    last_eval = step
                    reached = evaluate(step)
                    fields.update(result.final_metrics)
                    if reached and tcfg.stop_at_target:
                        progress.update(step, fields)
                        break
                progress.update(step, fields)
                now = time.monotonic()
                due = (tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0) or (
                    tcfg.checkpoint_seconds is not None
                    and now - last_checkpoint >= tcfg.checkpoint_seconds
                )
                out_of_time, due = parallel.agree_end_of_step(interrupt, out_of_time, bool(due))
                if due and step < config.steps and not out_of_time:  # the last one follows
                    try:
                        checkpoint(step)
                    except _NonFiniteState as err:
                        nonfinite_state(step, str(err))
                        break
                    last_checkpoint = last_beat = time.monotonic()
                elif now - last_beat >= LEASE_BEAT_SECONDS:
                    store.heartbeat_run(result.run_id, owner)
                    last_beat = now
                if out_of_time:
                    result.message = f"stopped at the time budget ({tcfg.max_seconds:g} s)"
                    break
            if result.status == "running":
                result.status = "finished"
                if last_eval != step:
                    evaluate(step)
        clean_exit = True
    except BaseException as err:
        # Raised mid-step: the state may be half-updated, so no checkpoint is written.
        result.status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        result.message = parallel.peer_failure(err) or f"{type(err).__name__}: {err}"
        result.traceback = stored_traceback(err)
        raise
    finally:
        progress.stop()
        result.step = step
        if clean_exit and result.status != "diverged" and not resumed_done:
            try:
                checkpoint(step, finished=result.status == "finished")
            except _NonFiniteState as err:
                nonfinite_state(step, str(err))
        store.update_run(
            result.run_id,
            status=result.status,
            result=result.summary(),
            message=result.message,
            release=owner,
        )
        store.flush()
        if config.log.sinks:
            store.close()
    return result


def _decay_gains_to_one(optimizer: Any, rate: float) -> None:
    """optimizer.gain_decay: the "vector" groups (norm gains, other 1-D scales), which the
    grouping leaves undecayed, decay toward 1 at `rate` (decay_to="one" on those groups)."""
    targets = getattr(optimizer, "TARGETS", ())
    if "one" not in targets:
        raise ConfigError(
            f"config error: optimizer.gain_decay needs an optimizer with decay_to='one' "
            f"({type(optimizer).__name__} has {', '.join(targets) or 'no decay targets'}); "
            "set optimizer.gain_decay=0 or pick a wdlab optimizer such as adamw",
            field="optimizer.gain_decay",
        )
    gains = [g for g in optimizer.param_groups if g.get("role") == "vector"]
    if not gains:
        raise ConfigError(
            "config error: optimizer.gain_decay is set but the model has no gain (vector) "
            "parameters; set optimizer.gain_decay=0",
            field="optimizer.gain_decay",
        )
    for group in gains:
        group["weight_decay"] = float(rate)
        group["decay_to"] = "one"


def _reached_the_end(config: RunConfig, step: int, result: RunResult) -> bool:
    """Whether a run at `step` with this progress has nothing left to train."""
    if result.reached and config.train.stop_at_target:
        return True
    max_seconds = config.train.max_seconds
    if max_seconds is not None and result.train_seconds >= max_seconds:
        return True
    return step >= config.steps


def _divergence_message(
    step: int, loss: float, grad_norm: float, skips: int, checkpoint_path: Path
) -> str:
    what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", grad_norm)
    text = f"{what} became {value} at step {step}"
    if skips > MAX_SKIPS_IN_A_ROW:
        text += f" ({skips} steps in a row were non-finite)"
    text += "; lower --lr or set --set train.clip=1.0"
    if checkpoint_path.exists():
        text += f" (last good checkpoint: {checkpoint_path})"
    return text


def resume_config(
    store: Any,
    run_id: str,
    *,
    steps: int | None = None,
    flags: Mapping[str, Any] | None = None,
    assignments: list[str] | None = None,
) -> tuple[str, RunConfig]:
    """The full id and validated config of a stored run that may be continued.

    `steps` extends the budget (a finished run too, unless it stopped at its target).
    `flags` ({dotted key: value}, None values ignored) and `assignments` (--set items) may
    only repeat the run's own settings: a changed one is refused in one line naming it.
    """
    record = store.get_run(run_id)
    if record.status == "diverged":
        raise WdlabError(
            f"run {record.id} diverged; resuming would replay the same steps and diverge again: "
            "start a new run with a lower --lr (or --set train.clip=1.0)",
            field="run",
        )
    if record.status in ("running", "created") and record.owner:
        from wdlab.lease import describe

        raise WdlabError(
            f"run {record.id} is being trained by another process ({describe(record.owner)}); "
            f"wait for it to end or stop it, then resume with `wdlab run --resume {record.id}`",
            field="run",
        )
    summary = record.result or {}
    reached_step = int(summary.get("step") or 0)
    if record.status == "finished":
        stopped_at_target = bool(summary.get("reached")) and record.config.get(
            "train", {}
        ).get("stop_at_target", True)
        if steps is None or steps <= reached_step or stopped_at_target:
            why = (
                "it stopped at its target"
                if stopped_at_target
                else f"give --steps N with N > {reached_step} to train it further"
            )
            raise WdlabError(
                f"run {record.id} already finished at step {reached_step}; {why}, or start a "
                "new run instead of --resume",
                field="run",
            )
    tree = copy.deepcopy(record.config)
    for key, value in (flags or {}).items():
        if value is not None and key != "steps":
            set_dotted(tree, key, value)
    for item in assignments or []:
        key, value = parse_assignment(item)
        set_dotted(tree, key, value)
    config = validate(tree)
    _check_resume_config(record.id, record.config, config)
    if steps is not None:
        if steps < reached_step:
            raise ConfigError(
                f"--steps {steps} is below step {reached_step} that run {record.id} has "
                f"reached; give --steps N with N >= {reached_step}",
                field="steps",
            )
        config = validate({**config.to_dict(), "steps": steps})
    return record.id, config
