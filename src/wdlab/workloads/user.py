"""A user's own workload, named by its import path `package.module:ClassName`.

The path is what the run store records as the run's workload, so `--resume`, `wdlab report`
and sweep workers (spawned processes: they inherit sys.path) import the class again from
it. The current directory is put on sys.path first, as `python -m` would, so a module lying
beside the command is found by the `wdlab` console script too.

Errors are sorted by whose they are:
  - a path that does not resolve (no such module, no such class, not a Workload) is a
    one-line usage error with a did-you-mean (ValueError; the CLI exits 2);
  - an exception raised while the user's code runs (importing their module, or any method
    of their workload) becomes a UserCodeError carrying their traceback, wdlab's own outer
    frames dropped, so they see the line of their code that failed.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from wdlab._suggest import did_you_mean
from wdlab.errors import UserCodeError, WdlabError
from wdlab.workloads.base import Workload

_WDLAB_DIR = str(Path(__file__).resolve().parents[1]) + os.sep
_FORM = "give WORKLOAD as package.module:ClassName (see docs/workloads.md)"


def is_import_path(name: str) -> bool:
    return ":" in str(name)


def _ensure_cwd_on_path() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _module_suggestion(module_name: str, missing: str) -> str:
    """'; did you mean ...' for a module that does not exist, among its would-be siblings."""
    parent, _, leaf = missing.rpartition(".")
    try:
        where = importlib.import_module(parent).__path__ if parent else None
    except Exception:  # noqa: BLE001 - no suggestion then
        return ""
    names = [m.name for m in pkgutil.iter_modules(where if where else [os.getcwd()])]
    match = did_you_mean(leaf, names)
    if match and parent:
        return match.replace("'", f"'{parent}.", 1)
    return match


def load(path: str) -> type[Workload]:
    """The Workload subclass at `path` ('package.module:ClassName')."""
    module_name, _, attr = str(path).partition(":")
    if not module_name or not attr or not all(p.isidentifier() for p in module_name.split(".")):
        raise ValueError(f"workload {path!r} is not an import path; {_FORM}")
    _ensure_cwd_on_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ValueError(
                f"workload {path!r}: no module named {missing!r}"
                f"{_module_suggestion(module_name, missing)}; run wdlab from the folder that "
                "holds it, add that folder to PYTHONPATH, or pip install your package"
            ) from None
        raise user_error(path, "import", err) from None
    except Exception as err:  # noqa: BLE001 - SyntaxError, an exception at import time
        raise user_error(path, "import", err) from None
    obj = getattr(module, attr, None)
    if obj is None:
        candidates = [name for name, value in vars(module).items()
                      if isinstance(value, type) and issubclass(value, Workload)
                      and value is not Workload]
        hint = did_you_mean(attr, candidates) or (
            f"; it defines {', '.join(sorted(candidates))}" if candidates else "")
        raise ValueError(f"workload {path!r}: module {module_name} has no {attr!r}{hint}")
    if not (isinstance(obj, type) and issubclass(obj, Workload)):
        raise ValueError(
            f"workload {path!r} is a {type(obj).__name__}, not a Workload class; subclass "
            "wdlab.workloads.Workload or build one with wdlab.workloads.from_torch(...)"
        )
    missing_methods = sorted(getattr(obj, "__abstractmethods__", ()))
    if missing_methods:
        raise ValueError(
            f"workload {path!r} does not implement {', '.join(missing_methods)}; add "
            "those methods (see wdlab.workloads.Workload)"
        )
    for name, kind in (("metric", str), ("higher_is_better", bool)):
        if not isinstance(getattr(obj, name, None), kind):
            raise ValueError(
                f"workload {path!r} needs a class attribute {name} ({kind.__name__}); e.g. "
                "metric = 'val_accuracy', higher_is_better = True"
            )
    return obj


# ----------------------------------------------------------------------------- user errors


def _is_wdlab_frame(filename: str) -> bool:
    return str(Path(filename).resolve()).startswith(_WDLAB_DIR)


def _library_frame(filename: str) -> bool:
    """A frame of wdlab, torch, or an installed package / the standard library."""
    text = str(Path(filename).resolve())
    return (_is_wdlab_frame(filename) or os.sep + "site-packages" + os.sep in text
            or text.startswith(str(Path(inspect.getfile(os)).parent)))


def user_error(path: str, where: str, err: BaseException) -> UserCodeError:
    """A UserCodeError for `err`, raised in the user's code: their frames (wdlab's outer
    frames dropped) and one summary line naming the method and their line."""
    frames = traceback.extract_tb(err.__traceback__)
    first = next((i for i, f in enumerate(frames) if not _is_wdlab_frame(f.filename)), 0)
    kept = frames[first:]
    text = "Traceback (most recent call last):\n" + "".join(traceback.format_list(kept))
    text += "".join(traceback.format_exception_only(type(err), err))
    own = [f for f in kept if not _library_frame(f.filename)] or kept
    at = f" at {Path(own[-1].filename).name}:{own[-1].lineno}" if own else ""
    body = (str(err).strip().splitlines() or [""])[0]
    message = (
        f"your workload {path} raised {type(err).__name__}: {body} in {where}{at} (an "
        "error in your code, not in wdlab)"
    )
    return UserCodeError(message, text)


def _passes_through(err: BaseException) -> bool:
    """Errors that keep their own meaning: wdlab's one-line errors, a user's earlier error,
    and memory the machine does not have."""
    out_of_memory = isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
    return isinstance(err, (WdlabError, UserCodeError)) or out_of_memory


def call(path: str, where: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs), with an exception from it reported as the user's."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:
        if _passes_through(err):
            raise
        raise user_error(path, where, err) from err


def from_probe(path: str, err: BaseException) -> UserCodeError | None:
    """The user's error behind a ValueError the grouping probe raised while running their
    model (its __cause__ went through their code), else None."""
    cause = err.__cause__
    if cause is None or _passes_through(cause):
        return None
    frames = traceback.extract_tb(cause.__traceback__)
    if not any(not _library_frame(f.filename) for f in frames):
        return None
    return user_error(path, "the model's forward (wdlab's grouping probe ran it on "
                      "example_input())", cause)


class GuardedWorkload:
    """A user's workload instance whose methods report exceptions as the user's and whose
    results are checked (a loss must be a scalar tensor, evaluate() must give the metric),
    so a mistake there reads as a one-line error, not as a failure deep inside wdlab."""

    def __init__(self, path: str, inner: Workload) -> None:
        self._path, self._inner = path, inner

    @classmethod
    def create(cls, path: str, workload_cls: type[Workload], *args: Any) -> GuardedWorkload:
        return cls(path, call(path, f"{workload_cls.__name__}()", workload_cls, *args))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _call(self, where: str, *args: Any) -> Any:
        return call(self._path, f"{where}()", getattr(self._inner, where), *args)

    def build_model(self) -> Any:
        import torch

        model = self._call("build_model")
        if not isinstance(model, torch.nn.Module):
            raise WdlabError(f"your workload {self._path}: build_model() returned a "
                             f"{type(model).__name__}; it must return a torch.nn.Module")
        return model

    def batch(self, step: int) -> Any:
        return self._call("batch", step)

    def loss(self, model: Any, batch: Any) -> Any:
        import torch

        value = self._call("loss", model, batch)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise WdlabError(f"your workload {self._path}: loss() returned {shape}; it must "
                             "return a scalar tensor (e.g. reduce with .mean())")
        return value.reshape(())

    def evaluate(self, model: Any) -> dict[str, float]:
        metrics = self._call("evaluate", model)
        metric = self._inner.metric
        if not isinstance(metrics, Mapping) or metric not in metrics:
            got = sorted(metrics) if isinstance(metrics, Mapping) else type(metrics).__name__
            raise WdlabError(f"your workload {self._path}: evaluate() returned {got}; it must "
                             f"return a dict holding its metric {metric!r}")
        out: dict[str, float] = {}
        for key, value in metrics.items():
            try:
                out[str(key)] = float(value)
            except (TypeError, ValueError):
                raise WdlabError(f"your workload {self._path}: evaluate() gave {key!r} = "
                                 f"{value!r}; every value must be a number") from None
        return out

    def example_input(self) -> Any:
        return self._call("example_input")

    def data_hash(self) -> str:
        return str(self._call("data_hash"))

    @property
    def width(self) -> int:
        try:
            return int(self._inner.width)
        except NotImplementedError:
            raise WdlabError(
                f"your workload {self._path} declares no width, which optimizer.scaling "
                "needs; give the class a `width` property (e.g. the model's hidden size)"
            ) from None
