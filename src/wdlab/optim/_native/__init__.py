"""The one-pass C kernels of kernels.c: built on first use, cached, run on torch's threads.

Why: on CPU a chain of torch ops moves each tensor through memory once per op, so SGDW,
Lion, SCALE, FAdam and the AdamP/SGDP cosine test stay far below the memory-bandwidth limit
(docs/performance.md). kernels.c does each update in one read and one write.

How: the C file is compiled with the system C compiler (`cc`, or $CC) into a shared library
under the user cache ($WDLAB_CACHE, else $XDG_CACHE_HOME/wdlab, else ~/.cache/wdlab), keyed
by a hash of the source, the compiler, the flags and this CPU, and loaded with ctypes. The
kernels split a step over OpenMP threads, linked against the OpenMP runtime torch loaded, so
they run on torch's own thread pool: a second pool (Python threads, or a second OpenMP
runtime) competes with torch's threads, which spin for a while after every parallel op, and
measured 26% slower right after one. Where no runtime is found the kernels run on one
thread. Without a compiler (or with WDLAB_NATIVE=0) nothing fails: `available()` is False
and the optimizers take their torch path ("chunked").
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

SOURCE = Path(__file__).with_name("kernels.c")
CFLAGS = ["-O3", "-fno-math-errno", "-fopenmp-simd", "-fPIC", "-std=c11"]
"""-fopenmp-simd: the `omp simd` reductions vectorize even in a build without OpenMP threads."""
MIN_PER_THREAD = 1 << 16
"""Below this many elements per thread, fewer threads: waking one costs microseconds."""
_OPENMP_RUNTIME = re.compile(r"/lib(gomp|iomp5|omp)[-\w.]*\.so[\d.]*$")

_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_P, _I64, _INT, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
_ARRAYS = [_P, _P, _P, _P, _I64, _INT]  # w, g, state pointer arrays, sizes, count, nthreads
SIGNATURES: dict[str, list[Any]] = {
    "sgdw": [*_ARRAYS, _D, _D, _D, _INT, _D, _D, _INT],
    "lion": [*_ARRAYS, _D, _D, _D, _D, _D],
    "scaled_step": [_P, _P, _P, _I64, _I64, _INT, _INT, _D],
    "invariant_view": [_P, _P, _I64, _I64, _INT, _D, _D, _P, _P],
    "sumsq": [_P, _I64, _INT, _P],
    "fadam_fisher": [_P, _P, _P, _I64, _INT, _D, _D, _D, _INT, _INT, _P],
    "fadam_update": [_P, _P, _P, _P, _I64, _INT, _D, _D, _D, _D, _INT, _D, _D],
    "adam": [*_ARRAYS[:3], _P, _P, _I64, _INT, _P, _I64, _D, _D, _D, _D, _D, _INT],
    "adamp": [*_ARRAYS[:3], _P, _P, _P, _I64, _INT, _I64, _P, _I64, _D, _D, _D, _D, _D, _INT,
              _D, _D, _P, _P, _P],
    "sgdp": [*_ARRAYS[:3], _P, _P, _I64, _INT, _I64, _D, _D, _D, _INT, _D, _D, _D, _D, _P, _P,
             _P],
    "schedule_free": [_P, _P, _P, _P, _P, _I64, _INT, _D, _D, _D, _D, _D, _D, _D, _D],
}
_RETURNS = {"invariant_view": ctypes.c_int}
"""ctypes argument types of each kernel in kernels.c, so Python ints, floats and bools convert
to the C types the kernel declares (an int lr must arrive as a double)."""
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_failure: str | None = None


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


def openmp_runtime() -> str | None:
    """Path of the OpenMP runtime torch loaded into this process (Linux), else None."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split()[-1] for line in f if ".so" in line}
    except OSError:
        return None
    found = sorted(p for p in paths if _OPENMP_RUNTIME.search(p))
    return found[0] if found else None


def _flags(runtime: str | None) -> list[str]:
    # -march=native only where the cache key can name the CPU it was built for.
    native = ["-march=native"] if _cpu_flags() and platform.machine() in ("x86_64", "AMD64") else []
    return [*CFLAGS, *native, *(["-fopenmp"] if runtime else [])]


def _build(cc: str, runtime: str | None, target: Path) -> None:
    """Compile kernels.c for float and double into one library at `target` (atomically),
    linked against torch's OpenMP runtime by path (not -fopenmp, which adds the system one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        objects = []
        for real, suffix in (("float", "f32"), ("double", "f64")):
            obj = Path(tmp) / f"{suffix}.o"
            cmd = [cc, *_flags(runtime), f"-DREAL={real}", f"-DSUFFIX={suffix}", "-c",
                   str(SOURCE), "-o", str(obj)]
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
            objects.append(str(obj))
        partial = Path(tmp) / target.name
        link = [runtime, f"-Wl,-rpath,{Path(runtime).parent}"] if runtime else []
        subprocess.run([cc, "-shared", *objects, "-o", str(partial), *link, "-lm"], check=True,
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
        runtime = openmp_runtime()
        key = hashlib.sha256(
            "\0".join([SOURCE.read_text(), cc, version, " ".join(_flags(runtime)),
                       str(runtime), platform.machine(), _cpu_flags(), sys.platform]).encode()
        ).hexdigest()[:16]
        target = _cache_dir() / f"kernels-{key}.so"
        if not target.exists():
            _build(cc, runtime, target)
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


def plain(t: torch.Tensor) -> bool:
    """Whether the kernels may read `t` through its data pointer: exactly a torch.Tensor or
    nn.Parameter (no DTensor, FakeTensor or other subclass: its data_ptr need not be the data
    the math means), float32/float64 (so not complex, which would carry a lazy conjugate),
    on the CPU, contiguous, strided (not sparse), without a lazy negative bit. Cheap checks
    first: the step pays this per tensor."""
    return (
        type(t) in _PLAIN_TYPES
        and t.dtype in _SUFFIX
        and t.is_cpu
        and t.is_contiguous()
        and t.layout == torch.strided
        and not t.is_neg()
    )


def supports(*tensor_lists: Sequence[torch.Tensor | None]) -> bool:
    """Whether every given tensor is `plain` and all share one dtype (None entries, such as
    absent momentum buffers, are ignored) and the kernels load. Anything else (a DTensor of
    FSDP2, a non-contiguous view, mixed dtypes) takes the optimizers' torch path.

    `plain`'s checks written out in one generator: the step pays them per tensor, and a
    function call per tensor was a third of a small step's overhead."""
    present = [t for tensors in tensor_lists for t in tensors if t is not None]
    if not present:
        return False
    dtype, strided = present[0].dtype, torch.strided
    return dtype in _SUFFIX and all(
        type(t) in _PLAIN_TYPES and t.dtype == dtype and t.is_cpu and t.is_contiguous()
        and t.layout == strided and not t.is_neg()
        for t in present
    ) and available()


def require_plain(tensors: Sequence[torch.Tensor | None], name: str) -> None:
    """Raise one clear error instead of letting a kernel read a pointer that is not the data."""
    for t in tensors:
        if t is not None and not plain(t):
            raise TypeError(
                f"wdlab native kernel {name!r} needs plain contiguous CPU float32/float64 "
                f"tensors, got a {type(t).__name__} ({t.dtype}, {t.device}, "
                f"contiguous={t.is_contiguous()}); use mode='auto' or 'chunked'"
            )


def kernel(name: str, dtype: torch.dtype) -> Callable[..., Any]:
    lib = library()
    if lib is None:
        raise RuntimeError(f"wdlab's native kernels are unavailable: {_failure}")
    fn = getattr(lib, f"wd_{name}_{_SUFFIX[dtype]}")
    if fn.argtypes is None:
        fn.argtypes = SIGNATURES[name]
        fn.restype = _RETURNS.get(name)
    return fn


def threads_for(total: int) -> int:
    """OpenMP threads for `total` elements: torch's count, fewer when the work is small."""
    return max(1, min(torch.get_num_threads(), total // MIN_PER_THREAD))


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


def same_size(param: torch.Tensor, *others: torch.Tensor | None) -> None:
    """Raise unless every tensor has param's element count: kernels index them all alike, so a
    mismatch (state loaded for another model) would write out of bounds."""
    for t in others:
        if t is not None and t.numel() != param.numel():
            raise ValueError(
                f"optimizer state of shape {tuple(t.shape)} does not match its parameter of "
                f"shape {tuple(param.shape)}; was the state_dict saved for another model?"
            )


def _fits(tensor_lists: Sequence[Sequence[torch.Tensor | None]], dtype: torch.dtype,
          numels: list[int]) -> bool:
    """Whether every tensor is `plain`, of `dtype` and of its column's element count: one
    generator over all of them (the per-tensor checks with a call each were 3% of an SGDW
    step on 19.9M parameters)."""
    strided = torch.strided
    return all(
        type(t) in _PLAIN_TYPES and t.dtype == dtype and t.is_cpu and t.is_contiguous()
        and t.layout == strided and not t.is_neg() and t.numel() == n
        for tensors in tensor_lists for t, n in zip(tensors, numels, strict=True)
        if t is not None
    )


def run_multi(name: str, tensor_lists: Sequence[Sequence[torch.Tensor | None]],
              *scalars: Any, if_fit: bool = False) -> bool:
    """Run the multi-tensor kernel `name` (sgdw, lion, ...) over whole tensor lists, threaded;
    True when it ran. if_fit=True: return False instead of raising when the kernels cannot
    take the tensors (not `plain`, mixed dtypes, not built), so "auto" pays one check per step
    instead of `supports` and then this one. Mismatched sizes raise either way."""
    first = tensor_lists[0]
    if not first:
        return True
    dtype = first[0].dtype  # type: ignore[union-attr]
    numels = [t.numel() for t in first]  # type: ignore[union-attr]
    if dtype not in _SUFFIX or not _fits(tensor_lists, dtype, numels) or not available():
        for tensors in tensor_lists:  # name what the kernel may not read
            for t, ref in zip(tensors, first, strict=True):
                if t is None:
                    continue
                if if_fit and (not plain(t) or t.dtype != dtype):
                    return False
                require_plain((t,), name)
                if t.dtype != dtype:
                    raise TypeError(f"wdlab native kernel {name!r} needs tensors of one dtype")
                same_size(ref, t)  # type: ignore[arg-type]  # indexed with the first's sizes
        if if_fit and not available():
            return False
    fn = kernel(name, dtype)
    fn(*[pointers(ts) for ts in tensor_lists], (ctypes.c_int64 * len(numels))(*numels),
       len(first), threads_for(sum(numels)), *scalars)
    touched(first)
    return True


def run(name: str, dtype: torch.dtype, *args: Any) -> Any:
    """Call the kernel `name` with tensors passed as data pointers (numbers per SIGNATURES);
    its return value (None for most kernels)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    require_plain(tensors, name)
    if any(t.dtype != dtype for t in tensors if t.dtype != torch.float64):
        raise TypeError(f"wdlab native kernel {name!r} needs {dtype} tensors")
    return kernel(name, dtype)(
        *[a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
    )


def sum_of_squares(x: torch.Tensor) -> float:
    """sum(x^2) of a contiguous CPU float32/float64 tensor, accumulated in float64: one read,
    on all threads (torch.linalg.vector_norm reads at about a quarter of the bandwidth)."""
    threads = threads_for(x.numel())
    parts = torch.zeros(threads, dtype=torch.float64)
    run("sumsq", x.dtype, x, x.numel(), threads, parts)
    return float(parts.sum())


# -- Adam/AdamW: torch's fused CPU kernel, bit for bit, in one call per group --

_VECTOR_BYTES = {"AVX2": 32, "AVX512": 64}
"""Bytes per SIMD vector of torch's CPU kernels at each capability where kernels.c's Adam
reproduces them (elsewhere AdamW keeps torch's own kernel)."""
_adam_checked: dict[tuple[torch.dtype, bool], bool] = {}


def _adam_call(columns: Sequence[Sequence[torch.Tensor]], vec: int, lr: float, beta1: float,
               beta2: float, eps: float, weight_decay: float, decoupled: bool) -> bool:
    """kernels.c's Adam on (params, grads, exp_avgs, exp_avg_sqs, steps); False (nothing
    done) when a tensor is not one the kernel takes (see _adam_pointers)."""
    found = _adam_pointers(columns)
    if found is None:
        return False
    arrays, numels = found
    params = columns[0]
    kernel("adam", params[0].dtype)(
        *arrays[:4], numels, len(params), threads_for(sum(numels)), arrays[4], vec, lr, beta1,
        beta2, eps, weight_decay, decoupled)
    touched([t for column in (columns[0], *columns[2:]) for t in column])
    return True


def _adam_matches_torch(dtype: torch.dtype, decoupled: bool, vec: int) -> bool:
    """Whether kernels.c's Adam gives torch._fused_adam(w)_'s bits on this machine: checked
    once per process on a small sample (both lerp branches, with and without decay, a tensor
    with a scalar tail), since which multiply-adds torch's compiler fused is not visible."""
    key = (dtype, decoupled)
    if key not in _adam_checked:
        gen = torch.Generator().manual_seed(0)
        ok = True
        for beta1, wd in ((0.9, 0.1), (0.3, 0.0)):
            ours = [torch.randn(n, generator=gen, dtype=dtype) for n in (3 * vec + 5, 2 * vec)]
            theirs = [t.clone() for t in ours]
            state = [[torch.zeros_like(t) for t in ours] for _ in range(4)]
            steps = [[torch.zeros(()) for _ in ours] for _ in range(2)]
            fused = torch._fused_adamw_ if decoupled else torch._fused_adam_
            for _ in range(3):
                grads = [torch.randn(t.shape, generator=gen, dtype=dtype) for t in ours]
                hyper = dict(lr=0.01, beta1=beta1, beta2=0.999, eps=1e-8, weight_decay=wd)
                _adam_call((ours, grads, state[0], state[1], steps[0]), vec, **hyper,
                           decoupled=decoupled)
                torch._foreach_add_(steps[1], 1)
                fused(theirs, grads, state[2], state[3], [], steps[1], amsgrad=False,
                      maximize=False, **hyper)
            pairs = zip([*ours, *state[0], *state[1], *steps[0]],
                        [*theirs, *state[2], *state[3], *steps[1]], strict=True)
            ok = ok and all(torch.equal(a, b) for a, b in pairs)
        _adam_checked[key] = ok
    return _adam_checked[key]


def _adam_pointers(columns: Sequence[Sequence[torch.Tensor]]) -> tuple[list[Any], Any] | None:
    """The C pointer arrays of (params, grads, exp_avgs, exp_avg_sqs, steps), already checked
    with `supports`, and the sizes array; None unless the moments and grads have their param's
    element count and every step is a float32 CPU scalar (torch's layout for its fused
    kernels). List comprehensions: the step pays these per tensor."""
    numels = [p.numel() for p in columns[0]]
    if any([t.numel() for t in column] != numels for column in columns[1:4]):
        return None
    f32 = torch.float32
    if not all(type(s) is torch.Tensor and s.dtype == f32 and s.is_cpu and s.dim() == 0
               for s in columns[4]):
        return None
    arrays = [(ctypes.c_void_p * len(numels))(*[t.data_ptr() for t in column])
              for column in columns]
    return arrays, (ctypes.c_int64 * len(numels))(*numels)


def run_adam(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
             exp_avgs: Sequence[torch.Tensor], exp_avg_sqs: Sequence[torch.Tensor],
             steps: Sequence[torch.Tensor], *, lr: float, beta1: float, beta2: float,
             eps: float, weight_decay: float, decoupled: bool) -> bool:
    """One step of torch._fused_adamw_ (decoupled) or _fused_adam_ (l2), step counters
    incremented, as one kernels.c call over all tensors; False (nothing done) where it cannot
    promise torch's bits: tensors the kernels do not take, step counters not float32 CPU
    scalars, a torch CPU capability other than AVX2/AVX-512, or a failed check."""
    vec_bytes = _VECTOR_BYTES.get(torch.backends.cpu.get_cpu_capability())
    if not params or vec_bytes is None or not supports(params, grads, exp_avgs, exp_avg_sqs):
        return False
    vec = vec_bytes // params[0].element_size()
    if not _adam_matches_torch(params[0].dtype, decoupled, vec):
        return False
    return _adam_call((params, grads, exp_avgs, exp_avg_sqs, steps), vec, lr, beta1, beta2, eps,
                      weight_decay, decoupled)


# -- AdamP / SGDP: test each matrix, and update it at once where it is not projected --

View = tuple[str | None, torch.Tensor | None]
_VIEW_NAMES = {1: "channel", 2: "layer"}


def _test_buffers(params: Sequence[torch.Tensor]) -> tuple[list[int], torch.Tensor,
                                                              torch.Tensor, Any]:
    """Row counts (dim 0) of the matrices, the test's float64 scratch and norms, and views."""
    rows = [p.size(0) for p in params]
    scratch = torch.empty(torch.get_num_threads() * max(rows) * 3, dtype=torch.float64)
    norms = torch.empty(sum(rows), dtype=torch.float64)
    return rows, scratch, norms, (ctypes.c_int * len(params))()


def _views(params: Sequence[torch.Tensor], rows: list[int], norms: torch.Tensor,
           views: Any) -> list[View]:
    """(view, norms of w in that view) per matrix; (None, None) for those already updated."""
    if any(view < 0 for view in views):
        raise MemoryError("wdlab native kernel: no memory for the AdamP/SGDP test's offsets")
    out: list[View] = []
    offset = 0
    for p, n, view in zip(params, rows, views, strict=True):
        if view == 0:
            out.append((None, None))
        else:
            out.append((_VIEW_NAMES[view], norms[offset:offset + (n if view == 1 else 1)]
                        .to(p.dtype)))
        offset += n
    return out


def run_adamp(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
              exp_avgs: Sequence[torch.Tensor], exp_avg_sqs: Sequence[torch.Tensor],
              steps: Sequence[torch.Tensor], *, lr: float, beta1: float, beta2: float,
              eps: float, weight_decay: float, decoupled: bool, delta: float,
              test_eps: float) -> list[View] | None:
    """AdamP on matrices (ndim >= 2, not empty): each one's scale-invariance test, then, if
    neither view passes, its Adam step (run_adam's arithmetic: torch's fused bits) while its w
    and g are still in cache. Returns per matrix (view, norms): (None, None) for the updated
    ones (step counted), the view and its norms for those the caller must project (untouched,
    step not counted); None (nothing done) where run_adam could not run."""
    vec_bytes = _VECTOR_BYTES.get(torch.backends.cpu.get_cpu_capability())
    if not params or vec_bytes is None or not supports(params, grads, exp_avgs, exp_avg_sqs):
        return None
    vec = vec_bytes // params[0].element_size()
    if not _adam_matches_torch(params[0].dtype, decoupled, vec):
        return None
    found = _adam_pointers((params, grads, exp_avgs, exp_avg_sqs, steps))
    if found is None:
        return None
    arrays, numels = found
    rows, scratch, norms, views = _test_buffers(params)
    kernel("adamp", params[0].dtype)(
        *arrays[:4], numels, (ctypes.c_int64 * len(rows))(*rows), len(params),
        torch.get_num_threads(), MIN_PER_THREAD, arrays[4], vec, lr, beta1, beta2, eps,
        weight_decay, decoupled, delta, test_eps, scratch.data_ptr(), norms.data_ptr(), views)
    touched([*params, *exp_avgs, *exp_avg_sqs, *steps])
    return _views(params, rows, norms, views)


def run_sgdp(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
             bufs: Sequence[torch.Tensor | None], *scalars: Any, delta: float,
             test_eps: float) -> list[View] | None:
    """SGDP on matrices as run_adamp does AdamP: test, then the sgdw kernel's update (scalars:
    lr, momentum, dampening, nesterov, keep, l2) of each unprojected one (bufs: None entries
    without momentum); None (nothing done) unless the kernels take every tensor."""
    if not params or not supports(params, grads, bufs):
        return None
    for p, g, b in zip(params, grads, bufs, strict=True):
        same_size(p, g, b)
    rows, scratch, norms, views = _test_buffers(params)
    kernel("sgdp", params[0].dtype)(
        pointers(params), pointers(grads), pointers(bufs), sizes(params),
        (ctypes.c_int64 * len(rows))(*rows), len(params), torch.get_num_threads(),
        MIN_PER_THREAD, *scalars, delta, test_eps, scratch.data_ptr(), norms.data_ptr(), views)
    touched([*params, *bufs])
    return _views(params, rows, norms, views)
