"""The training loop: one readable function from config to a stored, scored run.

    workload -> model -> groups -> optimizer -> for each step: lr, batch, loss, backward,
    clip, step, monitor, log; evaluate every N steps (timer paused, the AlgoPerf way);
    checkpoint atomically; stop at the target, the step budget or the time budget.

Determinism: data is a pure function of (seed, step), the model's init depends only on the
seed, the schedule only on the step, and checkpoints carry the torch RNG state, so a resumed
run ends bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from wdlab import workloads
from wdlab.atomic import atomic_open
from wdlab.config import RunConfig, validate
from wdlab.errors import ConfigError, WdlabError
from wdlab.factory import create_optimizer
from wdlab.store import Store

CHECKPOINT_FORMAT = 1
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
        }


def lr_multiplier(step: int, total: int, kind: str, warmup: int, final: float = 0.0) -> float:
    """Schedule multiplier s_t for 0-based `step`: linear warm-up, then the decay `kind`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    if kind == "linear":
        return final + (1.0 - final) * (1.0 - progress)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file and rename, so a kill never leaves a half-written checkpoint."""
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WdlabError(f"no checkpoint at {path}; the run cannot be resumed (start a new run)")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise WdlabError(f"checkpoint {path} has an unknown format; start a new run")
    return payload


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


def run(
    config: RunConfig,
    store: Store,
    runs_root: Path,
    *,
    progress: Progress | None = None,
    resume_id: str | None = None,
) -> RunResult:
    """Train one run to its target or budget; everything is written to `store` and `runs_root`."""
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
    except (ValueError, TypeError) as err:  # bad name or hyperparameter: the user's to fix
        raise ConfigError(f"config error: optimizer: {err}", field="optimizer") from None
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    params = [p for group in optimizer.param_groups for p in group["params"]]

    result = RunResult(run_id="", status="running", step=0, target=target, metric=workload.metric)
    start_step, skipped = 0, 0
    if resume_id is None:
        result.run_id = store.create_run(
            workload=config.workload,
            config=config.to_dict(),
            seed=config.seed,
            name=config.name,
            data_hash=workload.data_hash(),
        )
    else:
        result.run_id = resume_id
        stored_hash = store.get_run(resume_id).data_hash
        if stored_hash and stored_hash != workload.data_hash():
            raise WdlabError(
                f"run {resume_id} was trained on different data (hash {stored_hash[:12]}, now "
                f"{workload.data_hash()[:12]}; charlm's corpus changes between Python "
                "versions); resume it with the Python it started with, or start a new run"
            )
        payload = load_checkpoint(runs_root / resume_id / "last.pt")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["torch_rng"])
        start_step, skipped = payload["step"], payload["skipped"]
        for key in ("reached", "steps_to_target", "seconds_to_target", "train_seconds"):
            setattr(result, key, payload["progress"][key])
    checkpoint_path = runs_root / result.run_id / "last.pt"
    store.update_run(result.run_id, status="running")

    def checkpoint(step: int) -> None:
        save_checkpoint(
            checkpoint_path,
            {
                "format": CHECKPOINT_FORMAT,
                "run_id": result.run_id,
                "step": step,
                "skipped": skipped,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "progress": {
                    "reached": result.reached,
                    "steps_to_target": result.steps_to_target,
                    "seconds_to_target": result.seconds_to_target,
                    "train_seconds": result.train_seconds,
                },
            },
        )
        result.checkpoint = str(checkpoint_path)

    def log(step: int, metrics: dict[str, float]) -> None:
        store.log_metrics(result.run_id, step, metrics)

    def evaluate(step: int) -> bool:
        """Evaluate (not timed), log, and record the first time the target is reached."""
        model.eval()
        with torch.no_grad():
            metrics = workload.evaluate(model)
        model.train()
        result.final_metrics = {k: float(v) for k, v in metrics.items()}
        log(step, {**result.final_metrics, "train_seconds": result.train_seconds})
        value = result.final_metrics[workload.metric]
        if target is not None and not result.reached and workload.reached(value, target):
            result.reached = True
            result.steps_to_target = step
            result.seconds_to_target = result.train_seconds
        return result.reached

    monitor = _make_monitor(config, model, optimizer, log)
    sched, tcfg = config.schedule, config.train
    step, last_eval, consecutive_skips = start_step, -1, 0
    progress.start(config.steps, start_step)
    clean_exit = False
    try:
        with _interrupt_flag() as interrupt:
            while step < config.steps:
                if interrupt["stop"]:
                    result.status = "interrupted"
                    result.message = f"interrupted at step {step}; continue with --resume"
                    break
                tick = time.perf_counter()
                multiplier = lr_multiplier(
                    step, config.steps, sched.kind, sched.warmup, sched.final_lr_fraction
                )
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * multiplier
                if monitor is not None:
                    monitor.before_forward(step + 1)  # steps are logged 1-based
                loss = workload.loss(model, workload.batch(step))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tcfg.clip is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.clip)
                else:
                    grad_norm = torch.nn.utils.get_total_norm(
                        [p.grad for p in params if p.grad is not None]
                    )
                loss_value, norm_value = loss.item(), grad_norm.item()
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
                if monitor is not None:
                    monitor.step()
                step += 1
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
                if tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0:
                    checkpoint(step)
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
        result.message = f"{type(err).__name__}: {err}"
        raise
    finally:
        progress.stop()
        result.step = step
        if clean_exit and result.status != "diverged" and step != start_step:
            checkpoint(step)
        store.update_run(
            result.run_id, status=result.status, result=result.summary(), message=result.message
        )
        store.flush()
    return result


def _divergence_message(
    step: int, loss: float, grad_norm: float, skips: int, checkpoint_path: Path
) -> str:
    what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", grad_norm)
    text = f"{what} became {value} at step {step}"
    if skips > MAX_SKIPS_IN_A_ROW:
        text += f" ({skips} steps in a row were non-finite)"
    text += "; lower --lr or set --set train.clip=1.0"
    if checkpoint_path.is_file():
        text += f" (last good checkpoint: {checkpoint_path})"
    return text


def resume_config(store: Store, run_id: str) -> tuple[str, RunConfig]:
    """The full id and validated config of a stored run that may be continued."""
    record = store.get_run(run_id)
    if record.status == "finished":
        raise WdlabError(f"run {record.id} already finished; start a new run instead of --resume")
    return record.id, validate(record.config)
