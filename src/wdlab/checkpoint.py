"""A run's checkpoint: written atomically and only when finite, read back only when valid.

Why so strict: the checkpoint is what a resumed run trusts. A file that is empty,
truncated, not a checkpoint, a pickle that would run code, another run's checkpoint, one
whose step is past the budget or whose weights are non-finite is refused with one line
(CheckpointError) that says how to go on, instead of a torch traceback or a wrong run.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import torch

from wdlab.atomic import atomic_open
from wdlab.errors import CheckpointError

FORMAT = 2  # 2 adds progress.final_metrics / finished / message to format 1
READABLE_FORMATS = (1, 2)


def first_nonfinite(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, average: Any = None
) -> str | None:
    """The name of the first model, optimizer-state or weight-average (wdlab.averaging)
    tensor holding NaN or inf, else None."""
    for name, tensor in model.state_dict().items():
        if _nonfinite(tensor):
            return f"model.{name}"
    names = {id(p): n for n, p in model.named_parameters()}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if _nonfinite(value):
                return f"optimizer state {key!r} of {names.get(id(param), 'a parameter')}"
    if average is not None and any(_nonfinite(t) for t in average.tensors()):
        return f"the weight average {average.spec.text}"
    return None


def _nonfinite(value: Any) -> bool:
    """NaN or inf in `value`; of a DTensor (FSDP2), in this rank's shard (the caller agrees
    over the ranks: wdlab.parallel.first_of_ranks)."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return False
    if hasattr(value, "to_local"):
        value = value.to_local()
    return not bool(torch.isfinite(value).all())


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file and rename, so a kill never leaves a half-written checkpoint
    (and a failed write leaves no temporary file)."""
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)


def _refuse(path: Path, run_id: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} {why}; move it aside (mv {path} {path}.bad) and "
        f"`wdlab run --resume {run_id}` restarts the run from step 0, or start a new run",
        field="checkpoint",
    )


def read(path: Path, run_id: str) -> dict[str, Any]:
    """The checkpoint's payload, checked for shape; CheckpointError in one line otherwise."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise _refuse(path, run_id, f"cannot be read ({err.strerror})") from None
    if size == 0:
        raise _refuse(path, run_id, "is empty (its write was cut short)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # not a refused import: bytes that are no pickle
            raise _refuse(path, run_id, "is truncated or not a checkpoint") from None
        raise _refuse(
            path,
            run_id,
            "holds objects other than tensors and plain values (refused: wdlab never "
            "unpickles code)",
        ) from None
    except Exception as err:  # truncated zip, random bytes, ...: torch's text is no help here
        raise _refuse(
            path, run_id, f"is truncated or not a checkpoint ({type(err).__name__})"
        ) from None
    check_payload(path, run_id, payload)
    return payload


def check_payload(path: Path, run_id: str, payload: Any) -> None:
    """The shape checks of read(), for a payload however it was loaded (one torch.save file,
    or a sharded checkpoint's pieces: wdlab.parallel)."""
    if not isinstance(payload, dict) or payload.get("format") not in READABLE_FORMATS:
        raise _refuse(path, run_id, "is not a wdlab checkpoint of a known format")
    if payload.get("run_id") != run_id:
        raise _refuse(path, run_id, f"belongs to run {payload.get('run_id')!r}, not {run_id}")
    step, skipped = payload.get("step"), payload.get("skipped")
    if not _is_int(step) or step < 0 or not _is_int(skipped) or not 0 <= skipped <= step:
        raise _refuse(path, run_id, f"has an impossible step ({step!r}, skipped {skipped!r})")
    for key, kind in (("model", dict), ("optimizer", dict), ("torch_rng", torch.Tensor),
                      ("progress", dict)):
        if not isinstance(payload.get(key), kind):
            raise _refuse(path, run_id, f"has no valid {key!r} entry")
    progress = payload["progress"]
    seconds = progress.get("train_seconds")
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        raise _refuse(path, run_id, f"has an impossible train_seconds ({seconds!r})")
    for name, tensor in payload["model"].items():
        if not isinstance(tensor, torch.Tensor):
            raise _refuse(path, run_id, f"has a model entry {name!r} that is not a tensor")
        if _nonfinite(tensor):
            raise _refuse(path, run_id, f"holds non-finite weights ({name})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def restore(
    path: Path,
    payload: dict[str, Any],
    run_id: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: int,
) -> None:
    """Load a read() payload into model, optimizer and the torch RNG; refuse what does not
    fit this run (another model, a step past the budget `steps`, non-finite state)."""
    if payload["step"] > steps:
        raise _refuse(path, run_id, f"is at step {payload['step']}, past the run's budget {steps}")
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, ValueError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _refuse(path, run_id, f"does not fit this run's model ({first})") from None
    try:
        optimizer.load_state_dict(payload["optimizer"])
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as err:
        raise _refuse(
            path, run_id, f"does not fit this run's optimizer ({type(err).__name__})"
        ) from None
    bad = first_nonfinite(model, optimizer)
    if bad is not None:
        raise _refuse(path, run_id, f"holds non-finite values ({bad})")
    try:
        torch.set_rng_state(payload["torch_rng"])
    except (RuntimeError, TypeError, ValueError):
        raise _refuse(path, run_id, "has an invalid RNG state") from None


def restore_average(path: Path, payload: dict[str, Any], run_id: str, average: Any) -> None:
    """Load the checkpoint's weight average (wdlab.averaging) into `average`; refuse a
    checkpoint without one or with one that does not fit."""
    if "average" not in payload:
        raise _refuse(path, run_id, f"has no weight average ({average.spec.text} was asked)")
    try:
        average.load_state_dict(payload["average"])
    except ValueError as err:
        raise _refuse(path, run_id, str(err)) from None
