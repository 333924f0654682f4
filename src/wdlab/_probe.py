"""The scale-invariance probe behind wdlab.groups.classify, cheap at real model sizes.

A weight w is scale-invariant when f(c·w) = f(w) for all c > 0. Deciding that by rerunning
a float64 copy of the whole model per weight and scale cost 30 s and 2.7 GB on GPT-2 124M.
Here:

1. The probe runs a *replica* of the model: new module objects that share the caller's
   parameter storage (so nothing is copied; DTensor shards are gathered, meta tensors get
   random values), with their own buffers, training flags and norm eps. FSDP2 hooks and
   classes are left out, so a sharded model is probed like the plain one.
2. Screen: one train-mode forward with hooks that keep each parameter owner's inputs and
   outputs, one backward of a random projection s of the output with respect to those
   outputs only (no weight gradients). For weight w of module M, the derivative of s along
   c·w is D = Σ_calls <∂s/∂y_M, ∂y_M/∂c>, the second factor a forward-mode jvp of M alone.
   For Linear, Conv and Embedding the second factor is y_M minus the bias, free. An
   invariant weight has D = 0 up to round-off; a D well above round-off proves the output
   moves, and that settles almost every weight.
3. Exact test for the rest: scale w by 2, 1/2 and 2**20 in a float64, jittered, eps-shrunk
   replica of the smallest module containing all of w's uses, run on that module's inputs
   captured in the screen; if its output does not move (relative change <= PROBE_TOL), the
   model's output cannot; else climb to the parent, up to the whole model (the old test).
"""

from __future__ import annotations

import copy
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

# Each weight is scaled by each factor. 2 and 1/2 are the plain test; 2**20 exposes weights
# whose effect is only second order at init (q/k when the attention logits are ~0: scaling by
# 2 moved a post-LN GPT's output by 1.6e-8, scaling by 2**20 by 1e-3). Upward scaling cannot
# create an eps effect, so it costs invariant weights nothing. Powers of two keep w·c exact.
PROBE_SCALES = (2.0, 0.5, 2.0**20)
# Largest relative output change (max|Δy| / max|y|) still called invariant. In float64 with
# norm eps shrunk (_EPS_SHRINK) invariant weights moved the output by <= 1e-11 and the others
# by >= 1e-3 in the models measured (docs/grouping.md); a norm with a hard-coded eps leaves
# ~eps/variance.
PROBE_TOL = 1e-6
# The first-order screen: a weight whose directional derivative D = Σ_i g_i·ẏ_i exceeds
# SCREEN_TOL · Σ_i |g_i|(|ẏ_i| + |y_i|) moves the output (10x the worst case of float32
# round-off, to which an invariant weight's terms cancel, or which is all a weight
# normalized inside its module leaves in ẏ). A random projection makes D small by chance for
# about 1 weight in 100; _ROUNDS projections in turn leave that to chance ~1e-6.
SCREEN_TOL = 1e-5
_ROUNDS = 3
_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
# Norm layers' `eps` attribute is multiplied by this in the replicas so that the
# invariance up to eps (the property that matters for training) shows cleanly.
_EPS_SHRINK = 1e-12
# Relative size of the noise added to every parameter of the float64 replicas: init values
# such as zero biases or zero gains make weights look invariant by accident.
_JITTER = 0.1
_SEED = 0
_WRAPPER_ATTRS = ("module", "_orig_mod")  # DDP / DataParallel, torch.compile
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
_NOT_COPIED = ("_wdlab_classify_cache", "_compiled_call_impl")

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed
    DTensor = ()  # type: ignore[assignment,misc]


# --------------------------------------------------------------------------- walking


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP/DataParallel (`.module`) and torch.compile (`._orig_mod`) wrappers: a module
    with no parameters or buffers of its own whose only child is one of those attributes."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    while True:
        children = dict(model.named_children())
        inner = next((children[a] for a in _WRAPPER_ATTRS if a in children), None)
        if inner is None or len(children) != 1 or model._parameters or model._buffers:
            return model
        model = inner


def plain_class(m: nn.Module) -> type:
    """The module's own class: FSDP2 swaps it for a generated FSDP<Name> subclass."""
    cls = type(m)
    index = getattr(cls, "_orig_cls_mro_index", None)
    if index is not None and cls.__module__.startswith("torch.distributed"):
        return cls.__mro__[index]
    return cls


def is_layer(m: nn.Module) -> bool:
    """A leaf with parameters; a parametrized module (child `parametrizations`) counts as leaf."""
    if isinstance(m, parametrize.ParametrizationList):
        return False
    children = [n for n, _ in m.named_children() if n != "parametrizations"]
    return not children and any(True for _ in m.parameters())


def _is_distributed_hook(fn: Any) -> bool:
    f = getattr(fn, "func", fn)  # functools.partial
    f = getattr(f, "__func__", f)  # bound method
    module = getattr(f, "__module__", None) or type(f).__module__ or ""
    return module.startswith("torch.distributed")


def float_tensors(out: Any) -> Iterator[torch.Tensor]:
    """Every floating tensor in a tensor / tuple / list / dict output, in a fixed order."""
    if isinstance(out, torch.Tensor):
        if out.is_floating_point():
            yield out
    elif isinstance(out, Mapping):
        for key in out:
            yield from float_tensors(out[key])
    elif isinstance(out, (tuple, list)):
        for item in out:
            yield from float_tensors(item)


def _map_tensors(x: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, dict):
        return {k: _map_tensors(v, fn) for k, v in x.items()}
    if isinstance(x, (tuple, list)) and not hasattr(x, "_fields"):
        return type(x)(_map_tensors(v, fn) for v in x)
    return x


def call(model: nn.Module, x: Any, kwargs: Mapping[str, Any] | None = None) -> Any:
    if kwargs is not None:
        return model(*x, **kwargs)
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def relative_change(base: list[torch.Tensor], new: list[torch.Tensor]) -> float:
    """max over outputs of max|new - base| / max|base|; inf when shape or finiteness differ."""
    if len(base) != len(new):
        return math.inf
    worst = 0.0
    for a, b in zip(base, new, strict=True):
        if a.shape != b.shape or not bool(torch.isfinite(b).all()):
            return math.inf
        if a.numel() == 0:
            continue
        scale = float(a.abs().max())
        diff = float((b - a).abs().max())
        worst = max(worst, diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf))
    return worst


def infer_input(model: nn.Module, token_batch: int = 1) -> tuple[Any, str]:
    """An example input built from the first leaf module with parameters, and a description.
    Token ids come as one sequence of 8 (`token_batch` sequences): the screen's autograd
    graph grows with the tokens, and per-token layers decide the same on one sequence."""
    first = next((m for m in model.modules() if is_layer(m)), None)
    if isinstance(first, (nn.Embedding, nn.EmbeddingBag)):
        shape = (token_batch, 8)
        return torch.randint(0, first.num_embeddings, shape), f"Embedding -> ints {shape}"
    if isinstance(first, nn.Linear):
        return torch.randn(4, first.in_features), f"Linear -> randn(4, {first.in_features})"
    spatial = {nn.Conv1d: (64,), nn.Conv2d: (32, 32), nn.Conv3d: (8, 8, 8)}
    for cls, size in spatial.items():
        if isinstance(first, cls):
            shape = (4, first.in_channels, *size)
            return torch.randn(*shape), f"{cls.__name__} -> randn{shape}"
    what = type(first).__name__ if first is not None else "no leaf module with parameters"
    raise ValueError(
        f"example_input could not be inferred (first layer: {what}); pass example_input=... "
        "(a tensor, a tuple of positional args or a dict of kwargs), define "
        "model.example_input(), or pass probe=False"
    )


# --------------------------------------------------------------------------- replicas


class _Replicator:
    """Builds plain copies of a model's modules whose tensors come from `param_of` /
    `buffer_of`. Module objects, hooks (minus torch.distributed's) and other attributes are
    copied, so running a replica never touches the original's state."""

    def __init__(
        self,
        param_of: Callable[[torch.Tensor], torch.Tensor],
        buffer_of: Callable[[torch.Tensor], torch.Tensor],
        params: dict[int, nn.Parameter],
    ) -> None:
        self.param_of, self.buffer_of = param_of, buffer_of
        self.params = params  # id(original parameter) -> replica parameter (shared)
        self.modules: dict[int, nn.Module] = {}  # id(original module) -> replica
        self.memo: dict[int, Any] = {}

    def param(self, p: torch.Tensor) -> nn.Parameter:
        rep = self.params.get(id(p))
        if rep is None:
            rep = self.params[id(p)] = nn.Parameter(self.param_of(p), requires_grad=False)
        self.memo[id(p)] = rep
        return rep

    def __call__(self, m: nn.Module) -> nn.Module:
        done = self.modules.get(id(m))
        if done is not None:
            return done
        if type(m).__name__ == "OptimizedModule" and isinstance(
            getattr(m, "_orig_mod", None), nn.Module
        ):  # a torch.compile'd submodule: its forward is bound to the original
            rep = self.modules[id(m)] = self(m._orig_mod)
            return rep
        cls = plain_class(m)
        rep = cls.__new__(cls)
        self.modules[id(m)] = self.memo[id(m)] = rep
        state: dict[str, Any] = {}
        for key, value in m.__dict__.items():
            if key in _NOT_COPIED:
                continue
            if key == "_parameters":
                state[key] = {n: None if p is None else self.param(p) for n, p in value.items()}
            elif key == "_buffers":
                state[key] = {}
                for n, b in value.items():
                    state[key][n] = None if b is None else self.buffer_of(b)
                    if b is not None:
                        self.memo[id(b)] = state[key][n]
            elif key == "_modules":
                state[key] = {n: None if c is None else self(c) for n, c in value.items()}
            elif key in _HOOK_DICTS:
                state[key] = OrderedDict(
                    (h, fn) for h, fn in value.items() if not _is_distributed_hook(fn)
                )
            else:
                try:
                    state[key] = copy.deepcopy(value, self.memo)
                except Exception:  # an object that refuses copying: share it
                    state[key] = value
        rep.__dict__.update(state)
        return rep


def _plain_value(t: torch.Tensor) -> torch.Tensor:
    """The full, plain value of a parameter or buffer (no copy for a plain tensor)."""
    with torch.no_grad():
        if isinstance(t, DTensor):
            return t.detach().full_tensor()
        return t.detach()


def _materialize(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random stand-in for a meta tensor: N(0, 1/fan_in) matrices, ones for 0/1-D."""
    out = torch.zeros(t.shape, dtype=t.dtype, device="cpu")
    if out.is_floating_point() and out.ndim >= 2:
        fan_in = max(1, out[0].numel())
        out.normal_(0.0, fan_in**-0.5, generator=gen)
    elif out.is_floating_point():
        out.fill_(1.0)
    return out


def _shrink_eps(model: nn.Module) -> None:
    for m in model.modules():
        eps = getattr(m, "eps", None)
        if isinstance(eps, float) and eps > 0:
            m.eps = eps * _EPS_SHRINK


def _reseed() -> None:
    torch.manual_seed(_SEED)
    random.seed(_SEED)
    np.random.seed(_SEED)


# --------------------------------------------------------------------------- the probe


class Probe:
    """Replicas of one model and what one screen forward/backward learned about it."""

    def __init__(self, model: nn.Module, example_input: Any, *, screen: bool = True) -> None:
        self.model = model
        self._collect_values()
        self.f64: dict[int, nn.Parameter] = {}
        self.replica = self._replica(model, float64=False)
        device = next((v.device for v in self.values.values()), torch.device("cpu"))
        self.device = device
        self.dtype = next(
            (v.dtype for v in self.screen_params.values() if v.is_floating_point()),
            torch.float32,
        )
        _reseed()
        inferred = False
        if example_input is None and callable(getattr(self.replica, "example_input", None)):
            example_input, self.source = self.replica.example_input(), "model.example_input()"
        elif example_input is None:
            example_input, source = infer_input(self.replica)
            self.source, inferred = f"inferred ({source})", True
        else:
            self.source = "the given"
        self._set_input(example_input)
        if not screen:
            return
        try:
            self._screen()
        except ValueError:
            # One token sequence fails where a layer needs a batch (BatchNorm1d over pooled
            # sequences): the two-sequence input, drawn as the probe always drew it.
            if not (inferred and self.input.ndim == 2 and self.input.shape[0] == 1):
                raise
            _reseed()
            example_input, source = infer_input(self.replica, token_batch=2)
            self.source = f"inferred ({source})"
            self._set_input(example_input)
            self._screen()

    def _set_input(self, example_input: Any) -> None:
        self.input = _map_tensors(
            example_input,
            lambda t: t.detach().to(self.device, self.dtype if t.is_floating_point() else None),
        )

    # ---- tensors

    def _collect_values(self) -> None:
        """Plain values of every parameter and buffer, in a fixed order (gathering DTensor
        shards is a collective: every rank walks the same order)."""
        self.values: dict[int, torch.Tensor] = {}
        self.order: dict[int, int] = {}
        gen = torch.Generator().manual_seed(_SEED)
        meta: list[nn.Module] = []
        tensors = [
            *self.model.named_parameters(remove_duplicate=False),
            *self.model.named_buffers(remove_duplicate=False),
        ]
        for _, t in tensors:
            if id(t) in self.values:
                continue
            self.order[id(t)] = len(self.order)
            self.values[id(t)] = _materialize(t, gen) if t.is_meta else _plain_value(t)
        for m in self.model.modules():
            own = [t for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]
            if own and all(t.is_meta for t in own) and callable(
                getattr(m, "reset_parameters", None)
            ):
                meta.append(m)
        self.screen_params: dict[int, nn.Parameter] = {}
        self._meta_modules = meta

    def _screen_value(self, t: torch.Tensor) -> torch.Tensor:
        v = self.values[id(t)]
        if v.is_floating_point() and v.element_size() < 4:  # bf16/fp16: screen in fp32
            return v.float()
        return v

    def _f64_value(self, t: torch.Tensor) -> torch.Tensor:
        v = self.values[id(t)].to(torch.float64)
        if not v.is_floating_point() or v.numel() == 0:
            return v
        gen = torch.Generator().manual_seed(_SEED + self.order[id(t)])
        rms = float(v.pow(2).mean().sqrt())
        noise = torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v.device)
        return v + noise * (_JITTER * (rms if rms > 0 else 1.0))

    def _replica(self, module: nn.Module, *, float64: bool) -> nn.Module:
        if float64:
            rep = _Replicator(
                self._f64_value,
                lambda b: (self.values[id(b)].to(torch.float64, copy=True)
                           if b.is_floating_point() else self.values[id(b)].clone()),
                self.f64,
            )(module)
        else:
            rep = _Replicator(
                self._screen_value, lambda b: self._screen_value(b).clone(), self.screen_params
            )
            self.rep_of = rep.modules
            rep = rep(module)
            with torch.no_grad():  # meta models: each module's own init on the stand-ins
                for m in self._meta_modules:
                    rep_m = self.rep_of[id(m)]
                    rep_m.reset_parameters()
        _shrink_eps(rep)
        return rep.train()

    # ---- the screen

    def _forward(self, model: nn.Module, x: Any) -> Any:
        try:
            return call(model, x)
        except Exception as exc:
            raise ValueError(
                f"classify could not run the model on {self.source} example input "
                f"({type(exc).__name__}: {exc}); pass example_input=... that the model accepts "
                "or probe=False"
            ) from exc

    def _screen(self) -> None:
        """One forward (capturing inputs, keeping owners' outputs) and one backward of a
        random projection with respect to those outputs. Nothing here compares two runs, so
        the screen needs no determinism; the exact test checks its own."""
        rep = self.replica
        self.calls: dict[int, list[tuple[Any, Any, torch.Tensor]]] = {}
        self.kept: dict[int, list[list[torch.Tensor]]] = {}
        self.finished: list[tuple[int, list[Any]]] = []
        z = self._z = torch.zeros((), dtype=self.dtype, device=self.device, requires_grad=True)
        versions: dict[int, int] = {}
        self._affine: dict[int, torch.Tensor | None] = {}  # id(kept) -> the owner's bias
        pre_ids: dict[int, int] = {}

        def pre(orig: int) -> Any:
            rep = self.rep_of[orig]
            # Inputs are kept only where a jvp may need them (memory): affine owners'
            # derivatives come from their outputs alone.
            affine = type(rep) in _AFFINE or type(rep).__name__ == "Conv1D"  # HF's Conv1D
            owner = any(p is not None for p in rep._parameters.values())
            return _capture_hook(orig, self.calls, keep=owner and not affine)

        def post(orig: int, owner: bool) -> Any:
            def hook(_m: nn.Module, _a: Any, _k: Any, out: Any) -> Any:
                kept: list[torch.Tensor] = []

                def add_zero(t: torch.Tensor) -> torch.Tensor:
                    if not t.is_floating_point():
                        return t
                    # An output already in the graph is kept as it is (no copy: memory);
                    # one that is not (fed by the input alone), or that another owner
                    # returned too, joins the graph as t + 0, which is exact.
                    k = t if t.requires_grad and id(t) not in versions else t + z.to(t.dtype)
                    kept.append(k)
                    versions[id(k)] = k._version
                    return k

                if owner and isinstance(out, torch.Tensor):
                    out = add_zero(out)
                    rep = self.rep_of[orig]
                    hooked = len(rep._forward_hooks) > 1 or rep._forward_pre_hooks.keys() - {
                        pre_ids[orig]
                    }
                    if kept and not hooked and (
                        type(rep) in _AFFINE or type(rep).__name__ == "Conv1D"  # HF's Conv1D
                    ):
                        bias = getattr(rep, "bias", None)
                        if isinstance(rep, nn.modules.conv._ConvNd) and bias is not None:
                            bias = bias.view(-1, *([1] * (out.ndim - 2)))
                        self._affine[id(kept[0])] = bias
                elif owner and isinstance(out, (tuple, list)) and not hasattr(out, "_fields"):
                    out = type(out)(add_zero(t) if isinstance(t, torch.Tensor) else t for t in out)
                self.kept.setdefault(orig, []).append(kept)
                fns = [t.grad_fn for t in float_tensors(out) if t.grad_fn is not None]
                self.finished.append((orig, fns))
                return out

            return hook

        handles = []
        for orig_id, m in self.rep_of.items():
            if not any(p is not None for p in m._parameters.values()):
                continue  # only parameter owners are looked at (output candidates are owners)
            handles.append(m.register_forward_pre_hook(pre(orig_id), with_kwargs=True))
            pre_ids[orig_id] = handles[-1].id
            handles.append(m.register_forward_hook(post(orig_id, True), with_kwargs=True))
        try:
            _reseed()
            with torch.enable_grad():
                outputs = list(float_tensors(self._forward(rep, self.input)))
            if not outputs:
                raise ValueError(
                    f"the model returned no floating-point tensor on {self.source} example "
                    "input; classify compares outputs, so pass example_input=... or probe=False"
                )
            self.outputs = outputs
            flat = [k for per_call in self.kept.values() for ks in per_call for k in ks]
            # An output edited in place downstream has lost the value the gradient is for.
            self.edited = {id(k) for k in flat if k._version != versions[id(k)]}
            # A custom autograd.Function may have an approximate backward (PowerNorm's,
            # straight-through estimators): gradients that passed one are not derivatives.
            behind = _behind_custom_functions(outputs)
            self.edited |= {id(k) for k in flat if k.grad_fn is not None and k.grad_fn in behind}
            self._need = [k for k in flat if k.requires_grad and id(k) not in self.edited]
            self._rounds: list[dict[int, torch.Tensor | None]] = []
            self._gen = torch.Generator().manual_seed(_SEED)
        finally:
            for h in handles:
                h.remove()

    def _recapture(self, wanted: set[int]) -> None:
        """Inputs of the `wanted` modules (by id of the original), from one more no-grad
        forward of the screen replica (same seed and input as the screen)."""
        self.anc_calls: dict[int, list[Any]] = {}
        handles = [
            m.register_forward_pre_hook(_capture_hook(o, self.anc_calls), with_kwargs=True)
            for o, m in self.rep_of.items()
            if o in wanted
        ]
        try:
            _reseed()
            with torch.no_grad():
                self._forward(self.replica, self.input)
        finally:
            for h in handles:
                h.remove()

    def _grads(self, round_: int) -> dict[int, Any]:
        """For the round_-th random projection s = <v, output>: per kept output, the three
        sums (Σ terms, Σ terms², Σ|terms| + Σ|g·y|) of an affine owner's weight, else ∂s/∂output.
        Computed on first use by one backward (the graph is kept for the next round); the
        sums are taken in tensor hooks so that affine owners' gradients are never stored."""
        while len(self._rounds) <= round_:
            found: dict[int, Any] = {}
            # A random projection s = Σ<v, y>: E<v, Δy>² ∝ |Δy|² for any change Δy. Its
            # gradient is v itself, handed to autograd as grad_outputs (no product, no copy).
            vs = [
                torch.rand(y.shape, generator=self._gen, dtype=y.dtype).to(y.device).sub_(0.5)
                for y in self.outputs
            ]
            pairs = [(y, v) for y, v in zip(self.outputs, vs, strict=True) if y.requires_grad]
            if self._need and pairs:
                handles = [k.register_hook(self._grad_hook(k, found)) for k in self._need]
                try:
                    torch.autograd.grad(
                        [y for y, _ in pairs], [self._z], grad_outputs=[v for _, v in pairs],
                        allow_unused=True, retain_graph=True,
                    )
                finally:
                    for h in handles:
                        h.remove()
            self._rounds.append(found)
        return self._rounds[round_]

    def _grad_hook(self, k: torch.Tensor, found: dict[int, Any]) -> Callable[[Any], None]:
        def hook(g: torch.Tensor) -> None:
            if id(k) not in self._affine:
                found[id(k)] = g
                return
            # y = op(x, w) + b, op linear in w: ∂y/∂c = y - b
            found[id(k)] = _affine_sums(g, k.detach(), self._affine[id(k)])

        return hook

    def output_modules(self, candidates: list[nn.Module]) -> list[nn.Module]:
        """The output layer: the last-finishing candidate whose output feeds the output."""
        if not candidates:
            return []
        wanted = {id(m): m for m in candidates}
        finished = [(wanted[o], fns) for o, fns in self.finished if o in wanted]
        reachable: set[int] = set()
        stack = [t.grad_fn for t in self.outputs if t.grad_fn is not None]
        while stack:
            fn = stack.pop()
            if fn is None or id(fn) in reachable:
                continue
            reachable.add(id(fn))
            stack.extend(nxt for nxt, _ in fn.next_functions)
        connected = [m for m, fns in finished if any(id(f) in reachable for f in fns)]
        if connected:
            return [connected[-1]]
        return [finished[-1][0]] if finished else []

    def _tangent(
        self, module: nn.Module, rel: str, w: torch.Tensor, call_: tuple[Any, Any, Any],
        kept: list[torch.Tensor],
    ) -> list[torch.Tensor] | None:
        """∂y/∂c of one call of `module` when its parameter `rel` (= w) is scaled by c."""
        from torch.func import functional_call, jvp

        rep = self.rep_of[id(module)]
        if call_ is None or not _intact(call_):
            return None
        args, kwargs, state, _ = call_
        torch.set_rng_state(state)
        try:
            _, tangent = jvp(lambda t: functional_call(rep, {rel: t}, args, kwargs), (w,), (w,))
        except Exception:  # an op without forward-mode AD: decide exactly
            return None
        tangents = list(float_tensors(tangent))
        return tangents if len(tangents) == len(kept) else None

    def _derivative(
        self, param: torch.Tensor, owners: list[tuple[nn.Module, str]], round_: int
    ) -> tuple[float | None, bool]:
        """(|D| / sqrt(Σ terms²), False) for scaling `param` (the module docstring) when |D|
        clears round-off; (None, retry) when this projection cannot tell, retry False when
        no projection can (an op without forward-mode AD, an output edited in place or
        whose gradient passed a custom autograd.Function)."""
        w = self.screen_params[id(param)]
        found = self._grads(round_)
        total = size = square = 0.0
        for module, rel in owners:
            for call_, kept in zip(
                self.calls.get(id(module), []), self.kept.get(id(module), []), strict=False
            ):
                if any(id(k) in self.edited for k in kept):
                    return None, False
                grads = [found.get(id(k)) for k in kept]
                if all(g is None for g in grads):
                    continue
                if rel == "weight" and len(kept) == 1 and id(kept[0]) in self._affine:
                    t_sum, t_square, t_size = grads[0]
                    total, square, size = total + t_sum, square + t_square, size + t_size
                    continue
                if any(isinstance(g, tuple) for g in grads):  # only the weight's sums kept
                    return None, False
                tangents = self._tangent(module, rel, w, call_, kept)
                if tangents is None:
                    return None, False
                for g, t, y in zip(grads, tangents, kept, strict=True):
                    if g is not None:
                        # Σ|g·y| joins the scale: a tangent that is round-off of y (the
                        # weight is normalized inside the module) must not pass as signal.
                        size += _sums(g * y.detach())[2]
                        t_sum, t_square, t_size = _sums(g * t.to(g.dtype))
                        total, square, size = total + t_sum, square + t_square, size + t_size
        if not (size > 0 and math.isfinite(size) and math.isfinite(total)):
            return None, size > 0
        if abs(total) <= SCREEN_TOL * size:  # within 10x worst-case float32 round-off
            return None, True
        return abs(total) / math.sqrt(square), False

    # ---- exact tests

    def _exact(self, module: nn.Module, param: torch.Tensor, root: bool) -> float | None:
        """Largest relative change of `module`'s output over PROBE_SCALES when `param` is
        scaled, in a float64 replica run on the module's captured inputs; None if the
        module cannot be rerun alone (raises, or is not deterministic)."""
        if id(module) in self._exact_cache and self._exact_cache[id(module)] is None:
            return None
        cache = self._exact_cache.get(id(module))
        if cache is None:
            rep = self._replica(module, float64=True)
            if root:
                calls = [(self.input, None, None)]
            elif all(_intact(c) for c in self.anc_calls[id(module)]):
                calls = [c[:3] for c in self.anc_calls[id(module)]]
            else:  # an input was edited in place after the call: cannot rerun it
                self._exact_cache[id(module)] = None
                return None
            to64 = lambda t: t.to(torch.float64) if t.is_floating_point() else t  # noqa: E731
            calls = [(_map_tensors(a, to64), _map_tensors(k, to64), s) for a, k, s in calls]
            buffers = {
                (m, k): b.clone()
                for m in rep.modules()
                for k, b in m._buffers.items()
                if b is not None
            }
            cache = self._exact_cache[id(module)] = (rep, calls, buffers)
        rep, calls, buffers = cache
        w = self.f64[id(param)]

        def run() -> list[torch.Tensor]:
            with torch.no_grad():
                for (m, k), saved in buffers.items():
                    m._buffers[k] = saved.clone()
                outs: list[torch.Tensor] = []
                for args, kwargs, state in calls:
                    _reseed()
                    if state is not None:
                        torch.set_rng_state(state)
                    clone = lambda t: t.clone()  # noqa: E731
                    a = _map_tensors(args, clone)
                    out = self._forward(rep, a) if root else call(
                        rep, a, _map_tensors(kwargs, clone)
                    )
                    outs.extend(t.detach() for t in float_tensors(out))
                return outs

        try:
            base = run()
            again = run()
        except Exception:
            if root:
                raise
            return None
        if relative_change(base, again) > PROBE_TOL / 100:
            if root:
                raise ValueError(
                    "the model's output changed between two identical train-mode forwards; "
                    "make it deterministic under torch.manual_seed or pass probe=False"
                )
            return None
        saved = w.detach().clone()
        worst = 0.0
        try:
            for c in PROBE_SCALES:
                with torch.no_grad():
                    w.mul_(c)
                try:
                    new = run()
                except Exception:  # the module refuses the scaled weight: not invariant
                    return math.inf
                worst = max(worst, relative_change(base, new))
                with torch.no_grad():
                    w.copy_(saved)
        finally:
            with torch.no_grad():
                w.copy_(saved)
        return worst

    def changes(
        self, specs: list[tuple[torch.Tensor, list[tuple[tuple[nn.Module, str], str, str]]] | None]
    ) -> list[float | None]:
        """probe_change for each (param, [((owner, local), owner path, name)]), None where
        the spec is None (not probed)."""
        self._exact_cache: dict[int, Any] = {}
        out: list[float | None] = []
        pending: list[int] = []
        for spec in specs:
            ratio = None
            if spec is not None:
                param, owners = spec
                rels = [
                    (m, name[len(path) + 1:] if path else name)
                    for (m, _), path, name in owners
                ]
                for round_ in range(_ROUNDS):
                    ratio, retry = self._derivative(param, rels, round_)
                    if not retry:
                        break
                if ratio is None:
                    pending.append(len(out))
            out.append(ratio)
        if not pending:
            return out
        chains = {i: self._chain([path for _, path, _ in specs[i][1]]) for i in pending}
        self._recapture({id(m) for chain in chains.values() for m in chain[:-1]})
        try:
            for i in pending:
                out[i] = self._climb(specs[i][0], chains[i])
        finally:
            self._exact_cache.clear()
        return out

    def _chain(self, paths: list[str]) -> list[nn.Module]:
        """The smallest module holding every owner path, then its ancestors up to the root."""
        parts = [p.split(".") if p else [] for p in paths]
        common: list[str] = []
        for level in zip(*parts, strict=False):
            if len(set(level)) > 1:
                break
            common.append(level[0])
        return [self.model.get_submodule(".".join(common[:d])) for d in range(len(common), -1, -1)]

    def _climb(self, param: torch.Tensor, chain: list[nn.Module]) -> float:
        """The exact test from the smallest module holding every use of `param` upwards."""
        for module in chain:
            root = module is self.model
            if not root and not self.anc_calls.get(id(module)):
                continue  # never called as a module (a ModuleList): nothing to rerun
            change = self._exact(module, param, root)
            if change is None:
                continue
            if change <= PROBE_TOL or root:
                return change
        raise AssertionError("unreachable: the root always decides")

    # ---- input weights

    def modules_fed_by_input(self) -> set[int]:
        """id of every original leaf module that receives an example-input tensor itself."""
        flat = [t for t in _iter_tensors(self.input)]
        fed: set[int] = set()
        handles = []
        for orig_id, m in self.rep_of.items():
            if not is_layer(m):
                continue

            def hook(_m: nn.Module, args: Any, kwargs: Any, orig_id: int = orig_id) -> None:
                for a in (*args, *kwargs.values()):
                    if isinstance(a, torch.Tensor) and any(a is t for t in flat):
                        fed.add(orig_id)

            handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
        self.replica.eval()
        try:
            _reseed()
            with torch.no_grad():
                try:
                    call(self.replica, self.input)
                except Exception as exc:
                    raise ValueError(
                        "could not run the model on the example input to find its input "
                        f"weights ({type(exc).__name__}: {exc}); pass example_input=... the "
                        "model accepts"
                    ) from exc
        finally:
            for h in handles:
                h.remove()
        return fed


def _behind_custom_functions(outputs: list[torch.Tensor]) -> set[Any]:
    """Autograd nodes upstream of a custom autograd.Function's node in the outputs' graph."""
    custom, seen = [], set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if isinstance(fn, torch.autograd.function.BackwardCFunction):
            custom.append(fn)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    behind: set[Any] = set()
    stack = [nxt for fn in custom for nxt, _ in fn.next_functions]
    while stack:
        fn = stack.pop()
        if fn is None or fn in behind:
            continue
        behind.add(fn)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return behind


def _sums(terms: torch.Tensor, chunk: int = 1 << 16) -> tuple[float, float, float]:
    """(Σt, Σt², Σ|t|) accumulated in float64 a chunk at a time: a float64 copy of a whole
    output as large as GPT-2's logits would cost more memory than the screen's graph."""
    total = square = size = 0.0
    for part in terms.detach().reshape(-1).split(chunk):
        wide = part.to(torch.float64)
        total += float(wide.sum())
        square += float(torch.dot(wide, wide))
        size += float(wide.abs_().sum())
    return total, square, size


def _affine_sums(
    g: torch.Tensor, y: torch.Tensor, bias: torch.Tensor | None, chunk: int = 1 << 16
) -> tuple[float, float, float]:
    """(Σt, Σt², Σ|t| + Σ|g·y|) for t = g·(y - bias), a block of rows at a time: the
    product g·y of the output layer alone (GPT-2's logits: 3.2 MB) is the largest temporary
    the screen would make, at the moment its autograd graph is largest."""
    lead = g.ndim - (bias.ndim if bias is not None else 0)  # dims the bias does not span
    if lead >= 1:
        g, y = g.flatten(0, lead - 1), y.flatten(0, lead - 1)
    else:
        g, y = g.unsqueeze(0), y.unsqueeze(0)
    rows = max(1, chunk // max(1, g[0].numel()))
    total = square = size = scale = 0.0
    for g_part, y_part in zip(g.split(rows), y.split(rows), strict=True):
        terms = g_part * y_part
        t_sum, t_square, t_size = _sums(terms, chunk)
        scale += t_size  # Σ|g·y|
        if bias is not None:
            terms.addcmul_(g_part, bias, value=-1)
            t_sum, t_square, t_size = _sums(terms, chunk)
        total, square, size = total + t_sum, square + t_square, size + t_size
    return total, square, size + scale


def _capture_hook(orig: int, store: dict[int, list[Any]], keep: bool = True) -> Any:
    """A forward pre-hook appending (args, kwargs, rng state, versions) of each call to
    store[orig] (None where not `keep`, so call indices stay aligned). References, not
    copies: a tensor edited in place later is noticed by its version counter (_intact)."""

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not keep:
            store.setdefault(orig, []).append(None)
            return
        args, kwargs = _map_tensors(args, _detach), _map_tensors(kwargs, _detach)
        versions = [(t, t._version) for t in _iter_tensors((args, kwargs))]
        store.setdefault(orig, []).append((args, kwargs, torch.get_rng_state(), versions))

    return hook


def _detach(t: torch.Tensor) -> torch.Tensor:
    return t.detach()  # shares storage and version counter


def _intact(call_: tuple[Any, Any, Any, list[tuple[torch.Tensor, int]]]) -> bool:
    """Whether no captured input of this call was edited in place since."""
    return all(t._version == v for t, v in call_[3])


def _iter_tensors(x: Any) -> Iterator[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, Mapping):
        for v in x.values():
            yield from _iter_tensors(v)
    elif isinstance(x, (tuple, list)):
        for v in x:
            yield from _iter_tensors(v)
