"""Training on more than one process under torchrun: ranks, DDP / FSDP2 wrapping, the global
batch split by rank, one error line from any rank, and sharded checkpoints.

Why it is built this way:
- The global batch stays `workload.batch(step)` (a pure function of seed and step); rank r
  takes the r-th contiguous slice. Every workload's loss is a mean over equal-sized
  examples, so DDP's gradient average (or FSDP2's reduce-scatter average) of the per-rank
  means is the one-process gradient of the whole batch, up to float rounding.
- Every decision the loop takes (stop, skip a non-finite step, checkpoint now, target
  reached) is agreed by a collective, so ranks never take different branches and deadlock.
- Rank 0 alone writes the store; the others talk to a sink whose answers come from rank 0.
- A failing rank publishes its one line in the rendezvous store and tears its process group
  down, which breaks rank 0 out of the collective it waits in; rank 0 prints that line.
- Checkpoints of a multi-rank run are torch.distributed.checkpoint (DCP) directories: each
  rank writes its shard, rank 0 adds the non-tensor part (meta.pt, read with
  weights_only=True) and then flips the `last.dcp` symlink to the finished directory, so a
  reader sees the old or the new complete checkpoint. DCP itself stores tensors only here
  (its loader unpickles non-tensor entries), and its pickled `.metadata` is checked by an
  allow-list unpickler before DCP reads it. One process writes `last.pt` (torch.save) as
  before; either format loads with any number of ranks (DCP reshards).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from wdlab import checkpoint as checkpoint_io
from wdlab.errors import CheckpointError, ConfigError, WdlabError

MODES = ("ddp", "fsdp")
SINGLE_FILE = "last.pt"
SHARDED_LINK = "last.dcp"
META_FILE = "meta.pt"
_ERROR_KEY = "wdlab/error"
_PEER_WAIT_SECONDS = 3.0  # how long rank 0 waits for a peer's line after a collective broke


class PeerFailure(Exception):
    """Another rank failed first: `str(self)` is its one line, `code` its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Session:
    """This process's place in a torchrun job (set up by start(), torn down by stop())."""

    rank: int
    world: int
    local_rank: int
    backend: str
    store: Any  # the rendezvous key-value store (c10d), for error lines
    stop_agreed: bool = False  # the interrupt flag as all ranks agreed at the last step
    terminated: bool = False  # SIGTERM arrived (torchrun stopping the job)
    waited_for_peer: bool = False  # a failure path already waited for a peer's line

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_SESSION: Session | None = None


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun sets it (1 outside torchrun)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1") or 1), 1)
    except ValueError:
        return 1


def backend() -> str:
    """gloo for CPU tensors, plus nccl for CUDA tensors where a GPU and nccl are there."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def start() -> Session | None:
    """Join the torchrun job this process was started in (None outside one, or world 1)."""
    global _SESSION
    if _SESSION is not None:
        return _SESSION
    if world_size_from_env() <= 1:
        return None
    if not dist.is_available():
        raise WdlabError("this torch has no torch.distributed; install a torch built with it")
    from wdlab._compat import default_store

    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    chosen = backend()
    if "nccl" in chosen:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(chosen, timeout=timedelta(minutes=30))
    _SESSION = Session(
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        local_rank=local_rank,
        backend=chosen,
        store=default_store(),
    )
    signal.signal(signal.SIGTERM, _on_sigterm)
    return _SESSION


def current() -> Session | None:
    """The running session, None in a single process."""
    return _SESSION


def is_main() -> bool:
    """Rank 0 of the job, or the only process: the one that writes and prints."""
    return _SESSION is None or _SESSION.is_main


def stop() -> None:
    """Leave the job. No barrier: the loop's last collective (the final checkpoint or
    evaluation) is behind every rank, and a rank that returned early (Ctrl-C) must not
    leave the others waiting in one."""
    _teardown()


def _teardown() -> None:
    global _SESSION
    if dist.is_initialized():
        with suppress(Exception):  # already broken: the point is to close its sockets
            dist.destroy_process_group()
    _SESSION = None


# ---- one error line from any rank ------------------------------------------------------------


def _published(session: Session, wait: float = 0.0) -> dict[str, Any] | None:
    """The first failure a rank published, polling up to `wait` seconds for one (once per
    process: a second caller does not wait again). Polled with check(), whose misses are
    silent, where the store's own wait() logs a warning on every timeout."""
    deadline = time.monotonic() + (0.0 if session.waited_for_peer else wait)
    session.waited_for_peer = session.waited_for_peer or wait > 0
    try:
        while not session.store.check([_ERROR_KEY]):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
        return json.loads(session.store.get(_ERROR_KEY).decode())
    except Exception:  # noqa: BLE001 - the store is gone
        return None


@contextmanager
def guard(
    session: Session, describe: Callable[[BaseException], tuple[int, str | None]]
) -> Iterator[None]:
    """Run a command's body so that a failure on any rank ends the job with one line.

    `describe(exc)` gives (exit code, the one line, or None for a bug). The first rank to
    fail publishes its line in the rendezvous store and leaves: its process exit closes its
    sockets, so the collective the others wait in fails at once. Rank 0 then raises
    PeerFailure with that line (or its own exception, when it failed first); the other
    ranks exit with the code, silently (a bug's traceback stays on their stderr).
    """
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, then re-raised
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        own_code, own_line = describe(exc)
        if isinstance(exc, KeyboardInterrupt) and not session.is_main:
            raise SystemExit(own_code) from None  # Ctrl-C reached every rank: rank 0 says it
        peer = _published(session)
        if peer is None and _is_comm_failure(exc):  # a peer's exit broke our collective
            peer = _published(session, wait=_PEER_WAIT_SECONDS)
        primary = peer is None or isinstance(exc, (WdlabError, KeyboardInterrupt))
        if primary:
            line = own_line or f"{type(exc).__name__}: {_first_line(exc)}"
            if _is_comm_failure(exc):
                line = (
                    "another rank stopped without a word (killed, or its machine went away: "
                    f"{_first_line(exc)}); continue with `wdlab run --resume RUN`"
                )
            record = {"rank": session.rank, "code": own_code, "line": line}
            with suppress(Exception):  # no store: the collective failure alone tells them
                session.store.compare_set(_ERROR_KEY, "", json.dumps(record))
        _teardown()
        if session.is_main:
            if not primary:
                assert peer is not None
                message = f"rank {peer['rank']}: {peer['line']}"
                raise PeerFailure(message, int(peer["code"])) from None
            if _is_comm_failure(exc):  # e.g. DCP's CheckpointException wrapping it
                raise PeerFailure(line, own_code) from None
            raise
        if primary and own_line is None and not _is_comm_failure(exc):
            traceback.print_exception(exc)  # a bug on this rank: its traceback stays visible
        elif primary and peer is None and _is_comm_failure(exc):
            print(f"wdlab: error: rank {session.rank}: {line}", file=sys.stderr)  # rank 0 gone
        sys.stdout.flush()
        raise SystemExit(own_code if primary else int(peer["code"])) from None


def peer_failure(exc: BaseException) -> str | None:
    """"rank N: LINE" when `exc` is a collective broken by rank N's published failure."""
    if _SESSION is None or not _is_comm_failure(exc):
        return None
    peer = _published(_SESSION, wait=_PEER_WAIT_SECONDS)
    return f"rank {peer['rank']}: {peer['line']}" if peer else None


def _on_sigterm(signum: int, frame: Any) -> None:
    """torchrun's agent sends SIGTERM to every rank when one exits: rank 0 must live on to
    print that rank's line, and a SIGTERM sent to the job stops it like Ctrl-C (the flag is
    agreed at the end of the step, a checkpoint is written)."""
    if _SESSION is not None:
        _SESSION.terminated = True


def _is_comm_failure(exc: BaseException) -> bool:
    """A collective that broke because a peer went away (gloo/nccl), not a bug of our own."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    if isinstance(exc, (WdlabError, KeyboardInterrupt)):
        return False
    text = str(exc)
    return any(
        marker in text
        for marker in ("Connection closed by peer", "Connection reset", "Broken pipe",
                       "gloo", "NCCL", "ProcessGroup")
    )


def _first_line(exc: BaseException) -> str:
    """The first line of an error, without a C++ source location ("[.../pair.cc:537] ")."""
    text = str(exc).strip().splitlines()
    line = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", text[0]) if text else ""
    return line[:160] if line else type(exc).__name__


# ---- collectives the loop uses (identities in one process) -----------------------------------


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (between wdlab's own processes: pickled, trusted)."""
    if _SESSION is None:
        return obj
    box = [obj if _SESSION.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(values: list[float]) -> torch.Tensor:
    """A (world, len(values)) float64 tensor of every rank's values, the same on all ranks."""
    mine = torch.tensor(values, dtype=torch.float64)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    return torch.stack(parts)


def step_values(loss: torch.Tensor, grad_norm: torch.Tensor) -> tuple[float, float]:
    """(the loss of the global batch, the gradient norm) as floats, the same on every rank.

    The loss is the mean of the ranks' slice means (what one process computes on the whole
    batch, to rounding); the norm is already global (DDP averaged the gradients; a DTensor
    norm is reduced here) and rank 0's value is taken so all ranks decide alike."""
    from wdlab.optim.distributed import scalar

    if _SESSION is None:
        return loss.item(), grad_norm.item()
    rows = _gather([loss.item(), scalar(grad_norm)])
    return float(rows[:, 0].mean()), float(rows[0, 1])


def stop_requested(interrupt: Mapping[str, bool]) -> bool:
    """Whether to stop before the next step: the local Ctrl-C flag, or in a job the flag as
    all ranks agreed at the end of the last step (a flag one rank alone saw would split)."""
    if _SESSION is None:
        return bool(interrupt["stop"])
    return _SESSION.stop_agreed


def agree_end_of_step(interrupt: Mapping[str, bool], *flags: bool) -> tuple[bool, ...]:
    """`flags` true where any rank has them true; records the agreed Ctrl-C flag."""
    if _SESSION is None:
        return flags
    rows = _gather([float(interrupt["stop"] or _SESSION.terminated), *map(float, flags)])
    agreed = rows.amax(dim=0).tolist()
    _SESSION.stop_agreed = bool(agreed[0])
    return tuple(bool(v) for v in agreed[1:])


def first_of_ranks(problem: str | None) -> str | None:
    """The first rank's non-None `problem` (e.g. a non-finite shard), the same on all ranks."""
    if _SESSION is None:
        return problem
    everyone: list[str | None] = [None] * _SESSION.world
    dist.all_gather_object(everyone, problem)
    return next((p for p in everyone if p is not None), None)


# ---- the global batch, split by rank -----------------------------------------------------------


def local_batch(batch: Any) -> Any:
    """This rank's contiguous slice (along dim 0) of every tensor of the global batch."""
    if _SESSION is None:
        return batch
    rank, world = _SESSION.rank, _SESSION.world

    def part(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            return t
        if t.shape[0] % world:
            raise ConfigError(
                f"the global batch of {t.shape[0]} examples does not split evenly over "
                f"{world} ranks; set --set data.batch_size=N with N a multiple of {world} "
                "(or use a rank count that divides it)",
                field="data.batch_size",
            )
        size = t.shape[0] // world
        return t[rank * size : (rank + 1) * size]

    if isinstance(batch, tuple):
        return tuple(part(t) for t in batch)
    if isinstance(batch, list):
        return [part(t) for t in batch]
    return part(batch)


# ---- wrapping ----------------------------------------------------------------------------------


class _DDP(nn.parallel.DistributedDataParallel):
    """DDP that passes attribute reads through to the wrapped model, so a workload's loss can
    call the model's own helpers (`model.loss(...)`) as it does in one process."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def inner(model: nn.Module) -> nn.Module:
    """The user's model under a DDP wrapper (FSDP2 shards in place: the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def wrap(
    model: nn.Module, optimizer: torch.optim.Optimizer, mode: str
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model ready for this job: DDP (`mode="ddp"`) or FSDP2 `fully_shard` ("fsdp");
    unchanged in one process. The optimizer was built (grouped, probed) on the plain model;
    for FSDP2 its groups are pointed at the sharded parameters, by name."""
    if _SESSION is None:
        return model, optimizer
    if mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        names = {id(p): n for n, p in model.named_parameters()}
        device = "cuda" if "nccl" in _SESSION.backend and _on_cuda(model) else "cpu"
        fully_shard(model, mesh=init_device_mesh(device, (_SESSION.world,)))
        sharded = dict(model.named_parameters())
        for group in optimizer.param_groups:
            group["params"] = [sharded[names[id(p)]] for p in group["params"]]
        return model, optimizer
    return _DDP(model), optimizer


def reshard(model: nn.Module) -> None:
    """Put an FSDP2 model's parameters back into their shards (a no-op otherwise).

    Why: FSDP2 keeps the root module's gathered parameters after a forward that no backward
    follows (an evaluation), and the next forward uses them without gathering again, so a
    change made to the shards in between (the weight average swapped in or out, a
    Schedule-Free x/y swap, an optimizer step after an evaluation) would be invisible."""
    if not (dist.is_available() and dist.is_initialized()):  # no process group: no shards
        return
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.reshard()


def _on_cuda(model: nn.Module) -> bool:
    return any(p.is_cuda for p in model.parameters())


# ---- the store: rank 0 writes, the others ask it ---------------------------------------------


class LeaderSink:
    """Rank 0's sink: the real store, and the answers the other ranks need broadcast."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def __enter__(self) -> LeaderSink:
        self._store.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._store.__exit__(*exc)

    def create_run(self, **kwargs: Any) -> str:
        return broadcast(self._store.create_run(**kwargs))

    def get_run(self, ref: str) -> Any:
        return broadcast(self._store.get_run(ref))


class FollowerSink:
    """Other ranks' sink: create_run and get_run return rank 0's answers; writes go nowhere."""

    created_run: str | None = None

    def __enter__(self) -> FollowerSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def create_run(self, **kwargs: Any) -> str:
        self.created_run = broadcast(None)
        return self.created_run

    def get_run(self, ref: str) -> Any:
        return broadcast(None)

    def heartbeat_run(self, run_id: str, owner: str) -> bool:
        return True

    def truncate_metrics(self, run_id: str, after_step: int) -> int:
        return 0

    def claim_run(self, *args: Any, **kwargs: Any) -> None:
        return None

    def update_run(self, *args: Any, **kwargs: Any) -> None:
        return None

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


# ---- checkpoints -------------------------------------------------------------------------------


def checkpoint_path(run_dir: Path) -> Path:
    """Where this process writes the run's checkpoint: last.pt alone, last.dcp in a job."""
    return run_dir / (SINGLE_FILE if _SESSION is None else SHARDED_LINK)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The run's newest complete checkpoint, of either format (None when it has none).

    Both exist only when a writer of the other format was killed between writing its own
    and removing the old one: the higher step wins."""
    single, sharded = run_dir / SINGLE_FILE, run_dir / SHARDED_LINK
    found = [p for p in (single, sharded) if p.exists()]
    if len(found) < 2:
        return found[0] if found else None
    try:
        sharded_step = _read_meta(sharded, "?")["step"]
        single_step = torch.load(single, map_location="cpu", weights_only=True)["step"]
    except Exception:  # noqa: BLE001 - a damaged one: read() refuses it with its own line
        return sharded
    return sharded if sharded_step >= single_step else single


def remove_stale(run_dir: Path) -> None:
    """Remove what killed writers left: temporary files and directories, checkpoint
    directories `last.dcp` no longer points to. Rank 0 only, while no rank writes."""
    from wdlab.atomic import remove_stale_temps

    if _SESSION is not None and not _SESSION.is_main:
        return
    remove_stale_temps(run_dir / SINGLE_FILE)
    if not run_dir.is_dir():
        return
    link = run_dir / SHARDED_LINK
    keep = os.readlink(link) if link.is_symlink() else None
    for entry in run_dir.iterdir():
        stale_dir = entry.name.startswith(("ckpt-", ".ckpt-")) and entry.name != keep
        if stale_dir and entry.is_dir() and not entry.is_symlink():
            _rmtree(entry)
        elif entry.name.startswith(f".{SHARDED_LINK}.") and entry.is_symlink():
            entry.unlink(missing_ok=True)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _split(tree: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """`tree` with every tensor moved into `tensors` under its path and replaced by a marker
    holding what a loader needs to rebuild it (shape, dtype, how it was sharded)."""
    if isinstance(tree, torch.Tensor):
        from wdlab.optim.distributed import is_dtensor

        tensors[path] = tree
        placements = [str(p) for p in tree.placements] if is_dtensor(tree) else None
        return {"__tensor__": path, "shape": list(tree.shape),
                "dtype": str(tree.dtype).removeprefix("torch."), "placements": placements}
    if isinstance(tree, Mapping):
        return {key: _split(value, f"{path}/{key}", tensors) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        out = [_split(value, f"{path}/{i}", tensors) for i, value in enumerate(tree)]
        return out if isinstance(tree, list) else {"__tuple__": out}
    return tree


def _join(tree: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict) and "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if isinstance(tree, dict) and "__tuple__" in tree:
        return tuple(_join(v, tensors) for v in tree["__tuple__"])
    if isinstance(tree, dict):
        return {key: _join(value, tensors) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_join(value, tensors) for value in tree]
    return tree


def _markers(tree: Any) -> Iterator[dict[str, Any]]:
    if isinstance(tree, dict) and "__tensor__" in tree:
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _markers(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _markers(value)


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> Path:
    """Write the run's checkpoint; returns its path. One process: last.pt (torch.save,
    atomic rename), and a sharded one it replaces is removed. A job: every rank writes its
    shards with DCP into a new directory, rank 0 writes meta.pt there and then points the
    last.dcp symlink at it (atomic rename) and removes the old directory and last.pt."""
    if _SESSION is None:
        path = run_dir / SINGLE_FILE
        checkpoint_io.save(path, payload)
        _remove_sharded(run_dir / SHARDED_LINK)
        return path
    import torch.distributed.checkpoint as dcp

    name = broadcast(f"ckpt-{payload['step']:08d}-{os.getpid()}-{time.time_ns()}")
    target = run_dir / name
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(payload, "", tensors)
    if _SESSION.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    dcp.save(tensors, checkpoint_id=str(target))  # returns once every rank's shard is written
    link = run_dir / SHARDED_LINK
    if _SESSION.is_main:
        checkpoint_io.save(target / META_FILE, {"format": checkpoint_io.FORMAT,
                                                "sharded": True, "skeleton": skeleton,
                                                "world": _SESSION.world})
        _fsync_dir(target)
        if link.is_dir() and not link.is_symlink():  # a copy (cp -r) made the link a folder
            os.replace(link, run_dir / f"ckpt-copied-{time.time_ns()}")
        old = os.readlink(link) if link.is_symlink() else None
        tmp_link = run_dir / f".{SHARDED_LINK}.{os.getpid()}.tmp"
        tmp_link.unlink(missing_ok=True)
        os.symlink(name, tmp_link)
        os.replace(tmp_link, link)  # the commit: readers see the old or the new directory
        _fsync_dir(run_dir)
        if old and old != name:
            _rmtree(run_dir / old)
        (run_dir / SINGLE_FILE).unlink(missing_ok=True)
    dist.barrier()  # no rank reads or writes the next one before the link is in place
    return link


def _remove_sharded(link: Path) -> None:
    """Remove a sharded checkpoint: the last.dcp link and its directory (or a copied folder)."""
    if link.is_symlink():
        old = link.parent / os.readlink(link)
        link.unlink()
        _rmtree(old)
    elif link.is_dir():
        _rmtree(link)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _refuse(path: Path, run_id: str, why: str) -> CheckpointError:
    return checkpoint_io._refuse(path, run_id, why)


def _read_meta(path: Path, run_id: str) -> dict[str, Any]:
    """meta.pt of a sharded checkpoint: the payload without its tensors (markers instead)."""
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise _refuse(path, run_id, f"has no {META_FILE} (its write was cut short)")
    try:
        meta = torch.load(meta_path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - truncated, foreign or a pickle with code: refused alike
        raise _refuse(path, run_id, f"has an unreadable {META_FILE}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("skeleton"), dict):
        raise _refuse(path, run_id, f"has a {META_FILE} that is not a wdlab checkpoint's")
    return meta["skeleton"]


_METADATA_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # torch's own weights_only unpickler allows it
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's `.metadata` is a pickle: only DCP's own data classes, torch.Size, dtypes and
    paths pass (no builtins, so no call can reach code)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch.distributed.checkpoint.metadata" or (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def _check_dcp_metadata(path: Path, run_id: str) -> None:
    try:
        data = (path / ".metadata").read_bytes()
        _MetadataUnpickler(io.BytesIO(data)).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as err:
        raise _refuse(
            path, run_id,
            f"has an unreadable or unsafe DCP .metadata ({type(err).__name__}; wdlab never "
            "unpickles code)",
        ) from None


def read_checkpoint(
    path: Path, run_id: str, model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """The payload of `path` (either format), its tensors laid out for this process's model
    and optimizer (plain, DDP replicas or FSDP2 shards), validated as checkpoint.read does."""
    if path.name == SINGLE_FILE:
        payload = checkpoint_io.read(path, run_id)
        if _SESSION is None:
            return payload
        skeleton = _split(payload, "", tensors := {})
        templates = _templates(skeleton, model, optimizer)
        return _validated(path, run_id, _join(skeleton, {
            key: _placed(tensors[key], templates[key]) for key in tensors
        }))
    import torch.distributed.checkpoint as dcp

    resolved = path.resolve()
    if not resolved.is_dir():
        raise _refuse(path, run_id, "points to no checkpoint directory")
    skeleton = _read_meta(path, run_id)
    _check_dcp_metadata(path, run_id)
    templates = _templates(skeleton, model, optimizer)
    try:
        with warnings.catch_warnings():  # "no process group: loading in one process": yes
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(templates, checkpoint_id=str(resolved), no_dist=_SESSION is None)
    except Exception as err:  # noqa: BLE001 - missing shard, truncated file, changed shapes
        raise _refuse(
            path, run_id, f"cannot be loaded ({type(err).__name__}: {_first_line(err)[:160]})"
        ) from None
    return _validated(path, run_id, _join(skeleton, templates))


def _validated(path: Path, run_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """checkpoint.read's checks, on a payload assembled here (non-finite: any rank's shard)."""
    checkpoint_io.check_payload(path, run_id, payload)
    return payload


def _placed(full: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """`full` (a whole tensor) laid out as `template`: this rank's shard of a DTensor."""
    from torch.distributed.tensor import distribute_tensor

    from wdlab.optim.distributed import is_dtensor

    if not is_dtensor(template):
        return full.to(template.dtype)
    return distribute_tensor(
        full.to(template.dtype), template.device_mesh, template.placements, src_data_rank=None
    )


def _templates(
    skeleton: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, torch.Tensor]:
    """An empty tensor for every tensor of the checkpoint, laid out as this process holds it.

    Model entries: the model's own state_dict (DTensor shards under FSDP2). Optimizer state
    and the weight average (wdlab.averaging, one tensor per model parameter, in order):
    like its parameter when shaped like it and the parameter is sharded; else sharded as it
    was saved when this job is sharded too; else a whole plain tensor (DCP reads every
    layout into every other)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor import empty as dt_empty

    from wdlab.optim.distributed import is_dtensor

    own = inner(model).state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    model_params = list(inner(model).parameters())  # the weight average's order
    mesh = next((p.device_mesh for p in params if is_dtensor(p)), None)
    out: dict[str, torch.Tensor] = {}
    for marker in _markers(skeleton):
        key = marker["__tensor__"]
        dtype = getattr(torch, str(marker["dtype"]), None)
        shape = tuple(int(s) for s in marker["shape"])
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"checkpoint entry {key}: unknown dtype {marker['dtype']!r}")
        parts = key.strip("/").split("/")
        if parts[0] == "model" and "/".join(parts[1:]) in own:
            like = own["/".join(parts[1:])]
            out[key] = torch.empty_like(like, dtype=dtype) if like.shape == shape else (
                torch.empty(shape, dtype=dtype))
            continue
        param = None
        if parts[:2] == ["optimizer", "state"] and len(parts) >= 4 and parts[2].isdigit():
            index = int(parts[2])
            param = params[index] if index < len(params) else None
        elif parts[0] == "average" and parts[-1].isdigit():  # params/I or ring/K/I
            index = int(parts[-1])
            param = model_params[index] if index < len(model_params) else None
        if param is not None and is_dtensor(param) and tuple(param.shape) == shape:
            out[key] = torch.empty_like(param, dtype=dtype)
        elif mesh is not None and marker.get("placements"):
            placements = [_placement(p, Shard, Replicate) for p in marker["placements"]]
            out[key] = dt_empty(*shape, dtype=dtype, device_mesh=mesh, placements=placements)
        else:
            out[key] = torch.empty(shape, dtype=dtype)
    return out


def _placement(text: str, shard: Any, replicate: Any) -> Any:
    if text.startswith("S(") and text.endswith(")") and text[2:-1].isdigit():
        return shard(int(text[2:-1]))
    return replicate()


# ---- `wdlab run --nproc N`: torchrun's launcher, as a child of this process ------------------


def launch(nproc: int, argv: list[str], entry: list[str] | None = None) -> int:
    """Run `python -m wdlab ARGV` (or `python ENTRY... ARGV`) on `nproc` local ranks with
    torch's elastic launcher, the one torchrun uses, on a free port; returns rank 0's exit
    code (its one error line is already printed; torchrun's failure report is not)."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun does: no oversubscription
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    logging.getLogger("torch.distributed.launcher").setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    from torch.distributed.elastic.multiprocessing.api import SignalException

    try:
        elastic_launch(config, sys.executable)(*(entry or ["-m", "wdlab"]), *argv)
    except (SignalException, KeyboardInterrupt):  # Ctrl-C: the ranks checkpoint and say so
        return 130
    except ChildFailedError as err:
        # Rank 0 exits with the first failure's code, but the agent records it as the
        # SIGTERM it sent when that rank ended first: take rank 0's, else the first real one.
        codes = {rank: failure.exitcode for rank, failure in err.failures.items()}
        positive = [c for _, c in sorted(codes.items()) if c > 0]
        code = codes.get(0, -1)
        return code if code > 0 else (positive[0] if positive else 1)
    return 0
