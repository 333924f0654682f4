"""The one-pass C kernels of kernels.c: built on first use, cached, run on torch's threads.

Why: on CPU a chain of torch ops moves each tensor through memory once per op, so SGDW,
Lion, SCALE, FAdam and the AdamP/SGDP cosine test stay far below the memory-bandwidth limit
(docs/performance.md). kernels.c does each update in one read and one write.

How: the C file is compiled with the system C compiler (`cc`, or $CC) into a shared library
under the user cache ($WDLAB_CACHE, else $XDG_CACHE_HOME/wdlab, else ~/.cache/wdlab), keyed
by a hash of the source, the compiler, the flags and this CPU, and loaded with ctypes. A
step splits its elements evenly over torch.get_num_threads() threads; ctypes releases the
GIL, so the threads run in parallel. Without a compiler (or with WDLAB_NATIVE=0) nothing
fails: `available()` is False and the optimizers take their torch path ("chunked").
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

SOURCE = Path(__file__).with_name("kernels.c")
CFLAGS = ["-O3", "-fno-math-errno", "-fPIC", "-std=c11"]
MIN_PER_THREAD = 1 << 16
"""Below this many elements per thread, fewer threads: a hand-off costs about 20 µs."""

_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_P, _I64, _INT, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
_ARRAYS = [_P, _P, _P, _P, _I64, _I64, _I64]  # w, g, state arrays, sizes, count, begin, end
SIGNATURES: dict[str, list[Any]] = {
    "sgdw": [*_ARRAYS, _D, _D, _D, _INT, _D, _D, _INT],
    "lion": [*_ARRAYS, _D, _D, _D, _D, _D],
    "scaled_step": [_P, _P, _P, _I64, _INT, _I64, _I64, _D],
    "row_dots": [_P, _P, _I64, _I64, _I64, _P],
    "fadam_fisher": [_P, _P, _P, _I64, _I64, _D, _D, _D, _INT, _INT, _P],
    "fadam_update": [_P, _P, _P, _P, _I64, _I64, _D, _D, _D, _D, _INT, _D, _D],
}
"""ctypes argument types of each kernel in kernels.c, so Python ints, floats and bools convert
to the C types the kernel declares (an int lr must arrive as a double)."""
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_failure: str | None = None
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _cache_dir() -> Path:
    if os.environ.get("WDLAB_CACHE"):
        return Path(os.environ["WDLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wdlab"


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux): part of the cache key, since -march=native uses them."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _flags() -> list[str]:
    # -march=native only where the cache key can name the CPU it was built for.
    native = ["-march=native"] if _cpu_flags() and platform.machine() in ("x86_64", "AMD64") else []
    return [*CFLAGS, *native]


def _build(cc: str, target: Path) -> None:
    """Compile kernels.c for float and double into one library at `target` (atomically)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        objects = []
        for real, suffix in (("float", "f32"), ("double", "f64")):
            obj = Path(tmp) / f"{suffix}.o"
            cmd = [cc, *_flags(), f"-DREAL={real}", f"-DSUFFIX={suffix}", "-c", str(SOURCE),
                   "-o", str(obj)]
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
            objects.append(str(obj))
        partial = Path(tmp) / target.name
        subprocess.run([cc, "-shared", *objects, "-o", str(partial), "-lm"], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(partial, target)


def _load() -> ctypes.CDLL | None:
    global _library, _failure
    if os.environ.get("WDLAB_NATIVE", "1") == "0":
        _failure = "disabled by WDLAB_NATIVE=0"
        return None
    cc = _compiler()
    if cc is None:
        _failure = "no C compiler found (install gcc or set CC)"
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
        key = hashlib.sha256(
            "\0".join([SOURCE.read_text(), cc, version, " ".join(_flags()), platform.machine(),
                       _cpu_flags(), sys.platform]).encode()
        ).hexdigest()[:16]
        target = _cache_dir() / f"kernels-{key}.so"
        if not target.exists():
            _build(cc, target)
        return ctypes.CDLL(str(target))
    except subprocess.CalledProcessError as err:
        _failure = f"compiling {SOURCE.name} failed: {(err.stderr or '').strip()[:300]}"
    except (OSError, subprocess.SubprocessError) as err:
        _failure = f"building or loading {SOURCE.name} failed: {err}"
    return None


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on the first call; None when they cannot be built."""
    global _library
    if _library is None and _failure is None:
        with _lock:
            if _library is None and _failure is None:
                _library = _load()
    return _library


def available() -> bool:
    return library() is not None


def why_unavailable() -> str | None:
    """The reason the kernels are missing (None when they load)."""
    library()
    return _failure


def supports(*tensor_lists: Sequence[torch.Tensor | None]) -> bool:
    """Whether every given tensor is a dense contiguous CPU float32/float64 tensor of one dtype
    (None entries, such as absent momentum buffers, are ignored) and the kernels load."""
    dtype = None
    for tensors in tensor_lists:
        for t in tensors:
            if t is None:
                continue
            if dtype is None:
                dtype = t.dtype
            if (t.dtype != dtype or dtype not in _SUFFIX or t.device.type != "cpu"
                    or not t.is_contiguous() or t.is_sparse):
                return False
    return dtype is not None and available()


def kernel(name: str, dtype: torch.dtype) -> Callable[..., Any]:
    lib = library()
    if lib is None:
        raise RuntimeError(f"wdlab's native kernels are unavailable: {_failure}")
    fn = getattr(lib, f"wd_{name}_{_SUFFIX[dtype]}")
    if fn.argtypes is None:
        fn.argtypes = SIGNATURES[name]
        fn.restype = None
    return fn


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    if _pool is None or _pool_size < threads - 1:
        _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="wdlab-kernel")
        _pool_size = threads - 1
    return _pool


def split(total: int) -> list[tuple[int, int]]:
    """[begin, end) ranges of `total` elements, one per thread that is worth starting."""
    threads = max(1, min(torch.get_num_threads(), total // MIN_PER_THREAD))
    bounds = [total * i // threads for i in range(threads + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def parallel(call: Callable[[int, int], Any], total: int) -> None:
    """call(begin, end) over an even split of range(total): extra ranges on pool threads."""
    ranges = split(total)
    if len(ranges) == 1:
        call(0, total)
        return
    futures = [_executor(len(ranges)).submit(call, b, e) for b, e in ranges[1:]]
    try:
        call(*ranges[0])
    finally:
        for future in futures:
            future.result()


def pointers(tensors: Sequence[torch.Tensor | None]) -> Any:
    """A C array of the tensors' data pointers, or NULL when the list holds only None."""
    if all(t is None for t in tensors):
        return None
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])  # type: ignore[union-attr]


def sizes(tensors: Sequence[torch.Tensor]) -> Any:
    return (ctypes.c_int64 * len(tensors))(*[t.numel() for t in tensors])


def touched(tensors: Sequence[torch.Tensor | None]) -> None:
    """Bump autograd's version counters of tensors written through raw pointers, as an
    in-place torch op would, so a stale saved tensor still raises instead of misleading."""
    written = [t for t in tensors if t is not None]
    if written:
        torch.autograd.graph.increment_version(written)


def run_multi(name: str, tensor_lists: Sequence[Sequence[torch.Tensor | None]],
              *scalars: Any) -> None:
    """Run the multi-tensor kernel `name` (sgdw, lion) over whole tensor lists, threaded."""
    first = tensor_lists[0]
    if not first:
        return
    fn = kernel(name, first[0].dtype)  # type: ignore[union-attr]
    arrays = [pointers(ts) for ts in tensor_lists]
    counts = sizes(first)  # type: ignore[arg-type]
    total = sum(t.numel() for t in first)  # type: ignore[union-attr]
    parallel(lambda b, e: fn(*arrays, counts, len(first), b, e, *scalars), total)
    touched(first)


def run_ranged(name: str, dtype: torch.dtype, head: Sequence[Any], tail: Sequence[Any],
               total: int) -> None:
    """Run the one-tensor kernel `name` as fn(*head, begin, end, *tail) over range(total),
    threaded; tensors in head/tail are passed as data pointers, numbers per SIGNATURES."""
    fn = kernel(name, dtype)
    before = [v.data_ptr() if isinstance(v, torch.Tensor) else v for v in head]
    after = [v.data_ptr() if isinstance(v, torch.Tensor) else v for v in tail]
    parallel(lambda b, e: fn(*before, b, e, *after), total)
