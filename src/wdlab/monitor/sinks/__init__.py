"""Live loggers: a run's metrics also go, as they are logged, to TensorBoard, MLflow or W&B.

The store stays the record (resume, `wdlab show`, sweeps and reports read only it); a live
logger is a view of the same rows for the tools people already watch. `LiveRunSink` wraps
the engine's RunSink (wdlab.train): every `log_metrics` goes to the store first, then to
each logger, so the Monitor's metrics (which the engine logs through the same call) arrive
too. Settings are the `[log]` section of the run config (wdlab.config.LogConfig):

  log.sinks             tensorboard | mlflow | wandb (any of them; `wdlab run --log a,b`)
  log.tensorboard_dir   default <store dir>/wdlab-runs/<run>/tensorboard; given: <dir>/<run>
  log.mlflow_uri        default $MLFLOW_TRACKING_URI, else sqlite:///<store dir>/wdlab-mlflow.db
  log.mlflow_experiment default "wdlab"
  log.wandb_project     default "wdlab"
  log.wandb_dir         default <store dir>/wdlab-runs/<run> (W&B adds wandb/ below it)
  log.wandb_mode        default $WANDB_MODE, else "offline"

Resuming: TensorBoard continues the run's event folder and purges the steps after the
checkpoint (purge_step), MLflow continues the same MLflow run and skips steps it already
holds, W&B writes a new offline run with the same id (`wandb sync` them in order).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from wdlab.errors import ConfigError, WdlabError

NAMES = ("tensorboard", "mlflow", "wandb")
# sink -> (module that must be importable, pip extra that installs it)
_NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
          "wandb": ("wandb", "wandb")}
# wdlab run status -> what the logger records at the end
FAILED_STATUSES = ("diverged", "failed")


class Logger(Protocol):
    """One live logger for one run."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...
    def flush(self) -> None: ...
    def close(self, status: str) -> None: ...


@dataclass
class Target:
    """What a logger needs to know about the run it logs."""

    run_id: str
    name: str | None
    workload: str
    config: dict[str, Any]
    runs_root: Path
    start_after: int | None  # resumed: the store keeps the rows up to this step; new: None

    @property
    def store_dir(self) -> Path:
        return self.runs_root.parent


def parse_names(text: str) -> list[str]:
    """'tensorboard,mlflow' -> ['tensorboard', 'mlflow'] (the --log flag)."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in NAMES:
            raise ConfigError(
                f"--log {text}: unknown logger {name!r}; choose from {', '.join(NAMES)} "
                "(comma-separated)",
                field="log.sinks",
            )
    return list(dict.fromkeys(names))


def require(names: list[str]) -> None:
    """Each logger's package is installed, else one line naming the pip extra."""
    for name in names:
        module, extra = _NEEDS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"--log {name} needs the {module} package, which is not installed: "
                f"pip install 'wdlab[{extra}]' (or drop {name} from --log / log.sinks)",
                field="log.sinks",
            )


def open_logger(name: str, settings: Any, target: Target) -> Logger:
    """The logger `name` for `target`, with the [log] settings (wdlab.config.LogConfig)."""
    if name == "tensorboard":
        from wdlab.monitor.sinks.tensorboard import TensorBoardLogger

        base = settings.tensorboard_dir
        log_dir = (Path(base) / target.run_id if base
                   else target.runs_root / target.run_id / "tensorboard")
        return TensorBoardLogger(log_dir, target.start_after)
    if name == "mlflow":
        from wdlab.monitor.sinks.mlflow import MLflowLogger

        return MLflowLogger(mlflow_uri(settings, target), settings.mlflow_experiment, target)
    if name == "wandb":
        from wdlab.monitor.sinks.wandb import WandbLogger

        directory = Path(settings.wandb_dir) if settings.wandb_dir else (
            target.runs_root / target.run_id)
        mode = settings.wandb_mode or os.environ.get("WANDB_MODE") or "offline"
        return WandbLogger(settings.wandb_project, directory, mode, target)
    raise ConfigError(f"unknown logger {name!r}; choose from {', '.join(NAMES)}")


def mlflow_uri(settings: Any, target: Target) -> str:
    """log.mlflow_uri, else $MLFLOW_TRACKING_URI, else a sqlite file beside the store."""
    return (settings.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{target.store_dir / 'wdlab-mlflow.db'}")


class LiveRunSink:
    """A RunSink (wdlab.train) that writes to `store` and mirrors the metrics to live loggers.

    The loggers open on the run's first logged row (a refused start opens nothing) and
    close in `close(status)`. Only the main process of a torchrun job logs.
    """

    def __init__(self, store: Any, settings: Any, runs_root: Path, config: dict[str, Any]):
        require(list(settings.sinks))
        self._store, self._settings, self._runs_root = store, settings, Path(runs_root)
        self._config = config
        self._run_id: str | None = None
        self._start_after: int | None = None
        self._loggers: list[Logger] | None = None
        self._status = "finished"

    # ---- RunSink: delegated to the store, noting what the loggers need ---------------------

    def create_run(self, **kwargs: Any) -> str:
        self._run_id = self._store.create_run(**kwargs)
        return self._run_id

    def get_run(self, ref: str) -> Any:
        return self._store.get_run(ref)

    def claim_run(self, run_id: str, owner: str) -> None:
        self._run_id = run_id
        self._store.claim_run(run_id, owner)

    def heartbeat_run(self, run_id: str, owner: str) -> bool:
        return self._store.heartbeat_run(run_id, owner)

    def update_run(self, run_id: str, **kwargs: Any) -> None:
        if kwargs.get("status"):
            self._status = kwargs["status"]
        self._store.update_run(run_id, **kwargs)

    def truncate_metrics(self, run_id: str, after_step: int) -> int:
        self._start_after = after_step  # a resume: the loggers continue after this step
        return self._store.truncate_metrics(run_id, after_step)

    def log_metrics(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        self._store.log_metrics(run_id, step, metrics)
        for logger in self._open(run_id):
            logger.log(step, metrics)

    def flush(self) -> None:
        self._store.flush()
        for logger in self._loggers or []:
            logger.flush()

    def __getattr__(self, attr: str) -> Any:  # anything else the wrapped store offers
        store = self.__dict__.get("_store")
        if store is None:
            raise AttributeError(attr)
        return getattr(store, attr)

    # ---- the loggers -------------------------------------------------------------------------

    def _open(self, run_id: str) -> list[Logger]:
        if self._loggers is not None:
            return self._loggers
        from wdlab.optim import distributed

        self._loggers = []
        if not distributed.is_main_process():
            return self._loggers
        record = self._store.get_run(run_id)
        target = Target(run_id=run_id, name=getattr(record, "name", None),
                        workload=str(self._config.get("workload", "")), config=self._config,
                        runs_root=self._runs_root, start_after=self._start_after)
        for name in self._settings.sinks:
            try:
                self._loggers.append(open_logger(name, self._settings, target))
            except WdlabError:
                raise
            except Exception as err:  # the logger's own failure: name it and the setting
                raise WdlabError(
                    f"--log {name}: could not open the logger ({type(err).__name__}: {err}); "
                    f"check the log.{name}_* settings (docs/integrations.md)",
                    field="log.sinks",
                ) from err
        return self._loggers

    def close(self) -> None:
        """Flush and close every logger, recording how the run ended."""
        for logger in self._loggers or []:
            logger.close(self._status)
        self._loggers = []
