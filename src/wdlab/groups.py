"""Which parameter is what: role, scale invariance (probed) and decay; torch param groups.

Roles decide weight decay now and width scaling later (REFERENCE.md §4), so they follow
what a parameter *does* (module type, place in the forward pass), not its name.
Scale invariance (REFERENCE.md §2: f(c·w) = f(w)) is measured, not guessed: a float64
copy of the model is run with each weight scaled by 2 and by 1/2 and the outputs are
compared. docs/grouping.md explains every rule and default.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "ROLES",
    "ParamInfo",
    "classify",
    "input_weights",
    "param_groups",
    "PROBE_SCALES",
    "PROBE_TOL",
]

ROLES = ("matrix", "embedding", "output", "vector", "bias")

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
# Norm layers' `eps` attribute is multiplied by this in the probe copy so that the
# invariance up to eps (the property that matters for training) shows cleanly.
_EPS_SHRINK = 1e-12
# Relative size of the noise added to every parameter of the probe copy: init values
# such as zero biases or zero gains make weights look invariant by accident.
_JITTER = 0.1
_SEED = 0
_WRAPPER_ATTRS = ("module", "_orig_mod")  # DDP / DataParallel, torch.compile
_OVERRIDE_KEYS = ("weight_decay", "lr", "decay")


@dataclass(frozen=True)
class ParamInfo:
    """What wdlab decided about one trainable parameter (one row of `wdlab inspect`).

    name: the parameter's first name in the (unwrapped) model; tied_to: its other names.
    probe_change: the largest relative output change seen when scaling it (None if not
    probed); scale_invariant is probe_change <= PROBE_TOL.
    """

    name: str
    shape: tuple[int, ...]
    role: str
    scale_invariant: bool
    decay: bool
    numel: int
    module_type: str
    tied_to: tuple[str, ...] = ()
    probe_change: float | None = None


# --------------------------------------------------------------------------- model walking


def _unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP/DataParallel (`.module`) and torch.compile (`._orig_mod`) wrappers.

    A wrapper is a module with no parameters or buffers of its own whose only child is one
    of those attributes, so names match the inner model.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    while True:
        children = dict(model.named_children())
        inner = next((children[a] for a in _WRAPPER_ATTRS if a in children), None)
        if inner is None or len(children) != 1 or model._parameters or model._buffers:
            return model
        model = inner


@dataclass
class _Entry:
    """One unique parameter with every (name, owning module, local name) it appears under."""

    param: nn.Parameter
    names: list[str]
    owners: list[tuple[nn.Module, str]]


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module a parameter name belongs to; parametrized weights resolve to their module."""
    path, _, local = name.rpartition(".")
    parts = path.split(".") if path else []
    # torch.nn.utils.parametrize: "<mod>.parametrizations.<weight>.original[N]"
    if len(parts) >= 2 and parts[-2] == "parametrizations" and local.startswith("original"):
        local = parts[-1]
        parts = parts[:-2]
    return model.get_submodule(".".join(parts)), local


def _entries(model: nn.Module) -> list[_Entry]:
    """Trainable parameters, each once, in named_parameters order (frozen ones skipped)."""
    by_id: dict[int, _Entry] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if not p.requires_grad:
            continue
        entry = by_id.get(id(p))
        if entry is None:
            entry = by_id[id(p)] = _Entry(p, [], [])
        entry.names.append(name)
        entry.owners.append(_owner(model, name))
    return list(by_id.values())


def _declared(module: nn.Module, local: str, param: torch.Tensor) -> str | None:
    """The role a module declares for one of its parameters via `wdlab_role`, if any.

    `module.wdlab_role = "output"` sets the role of the module's >= 2-D parameters;
    `module.wdlab_role = {"weight": "output", "scale": "vector"}` sets them one by one.
    """
    decl = getattr(module, "wdlab_role", None)
    if decl is None:
        return None
    if isinstance(decl, str):
        role = decl if param.ndim >= 2 else None
    elif isinstance(decl, Mapping):
        role = decl.get(local)
    else:
        raise ValueError(
            f"wdlab_role on {type(module).__name__} must be a role name or a dict "
            f"{{param name: role}}, got {type(decl).__name__}"
        )
    if role is not None and role not in ROLES:
        raise ValueError(
            f"wdlab_role on {type(module).__name__} names role {role!r}; "
            f"allowed: {', '.join(ROLES)}"
        )
    return role


def _is_embedding(module: nn.Module, local: str) -> bool:
    return isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and local == "weight"


def _is_bias(local: str, param: torch.Tensor) -> bool:
    return local == "bias" or (local.endswith("_bias") and param.ndim <= 1)


def _fixed_role(entry: _Entry) -> str | None:
    """Role from declarations and module type alone; None means "matrix unless output"."""
    p = entry.param
    emb = [(m, n) for m, n in entry.owners if _is_embedding(m, n)]
    # A weight shared by an Embedding and a head stays "embedding" (the embedding's own
    # declaration, if any, still wins).
    declared_emb = {r for m, n in emb if (r := _declared(m, n, p)) is not None}
    declared = declared_emb or (
        set() if emb else {r for m, n in entry.owners if (r := _declared(m, n, p)) is not None}
    )
    if len(declared) > 1:
        raise ValueError(
            f"parameter {entry.names[0]!r} (tied to {', '.join(entry.names[1:])}) is declared "
            f"with conflicting roles {sorted(declared)} via wdlab_role; declare one"
        )
    if declared:
        return declared.pop()
    if emb:
        return "embedding"
    if any(_is_bias(n, p) for _, n in entry.owners):
        return "bias"
    if p.ndim <= 1:
        return "vector"
    return None


# --------------------------------------------------------------------------- probe input


def _is_layer(m: nn.Module) -> bool:
    """A leaf with parameters; a parametrized module (child `parametrizations`) counts as leaf."""
    if isinstance(m, parametrize.ParametrizationList):
        return False
    children = [n for n, _ in m.named_children() if n != "parametrizations"]
    return not children and any(True for _ in m.parameters())


def _infer_input(model: nn.Module) -> tuple[Any, str]:
    """An example input built from the first leaf module with parameters, and a description."""
    first = next((m for m in model.modules() if _is_layer(m)), None)
    if isinstance(first, (nn.Embedding, nn.EmbeddingBag)):
        return torch.randint(0, first.num_embeddings, (2, 8)), "Embedding -> ints (2, 8)"
    if isinstance(first, nn.Linear):
        return torch.randn(4, first.in_features), f"Linear -> randn(4, {first.in_features})"
    spatial = {nn.Conv1d: (64,), nn.Conv2d: (32, 32), nn.Conv3d: (8, 8, 8)}
    for cls, size in spatial.items():
        if type(first) is cls or isinstance(first, cls):
            shape = (4, first.in_channels, *size)
            return torch.randn(*shape), f"{cls.__name__} -> randn{shape}"
    what = type(first).__name__ if first is not None else "no leaf module with parameters"
    raise ValueError(
        f"example_input could not be inferred (first layer: {what}); pass example_input=... "
        "(a tensor, a tuple of positional args or a dict of kwargs), define "
        "model.example_input(), or pass probe=False"
    )


def _to_probe(x: Any, device: torch.device) -> Any:
    """Move an input to the probe device; floating tensors become float64."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to(device)
        return x.double() if x.is_floating_point() else x
    if isinstance(x, Mapping):
        return {k: _to_probe(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to_probe(v, device) for v in x)
    return x


def _call(model: nn.Module, x: Any) -> Any:
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def _float_tensors(out: Any) -> Iterator[torch.Tensor]:
    """Every floating tensor in a tensor / tuple / list / dict output, in a fixed order."""
    if isinstance(out, torch.Tensor):
        if out.is_floating_point():
            yield out
    elif isinstance(out, Mapping):
        for key in out:
            yield from _float_tensors(out[key])
    elif isinstance(out, (tuple, list)):
        for item in out:
            yield from _float_tensors(item)


def _relative_change(base: list[torch.Tensor], new: list[torch.Tensor]) -> float:
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


# --------------------------------------------------------------------------- the probe


class _Probe:
    """A float64, train-mode, jittered deep copy of the model that can be re-run exactly.

    Every forward starts from the same buffers (BatchNorm stats, power-iteration vectors)
    and the same RNG seeds (dropout), so the only difference between runs is the scaling.
    """

    def __init__(self, model: nn.Module, example_input: Any) -> None:
        try:
            self.model = copy.deepcopy(model)
        except Exception as exc:  # e.g. non-leaf tensors stored as attributes
            raise ValueError(
                f"classify could not copy the model to probe it ({type(exc).__name__}: {exc}); "
                "pass probe=False"
            ) from exc
        self.model.to(torch.float64).train()
        params = list(self.model.parameters())
        device = params[0].device if params else torch.device("cpu")
        with torch.no_grad():
            for p in params:
                p.requires_grad_(True)
                p.grad = None
                rms = float(p.pow(2).mean().sqrt()) if p.numel() else 0.0
                p.add_(torch.randn_like(p), alpha=_JITTER * (rms if rms > 0 else 1.0))
        for m in self.model.modules():
            eps = getattr(m, "eps", None)
            if isinstance(eps, float) and eps > 0:
                m.eps = eps * _EPS_SHRINK
        if example_input is None and callable(getattr(self.model, "example_input", None)):
            example_input, self.source = self.model.example_input(), "model.example_input()"
        elif example_input is None:
            example_input, self.source = _infer_input(self.model)
            self.source = f"inferred ({self.source})"
        else:
            self.source = "the given"
        self.input = _to_probe(example_input, device)
        self.buffers = {
            (mod, key): buf.detach().clone()
            for mod in self.model.modules()
            for key, buf in mod._buffers.items()
            if buf is not None
        }

    def _reset(self) -> None:
        with torch.no_grad():
            for (mod, key), saved in self.buffers.items():
                buf = mod._buffers.get(key)
                if buf is not None and buf.shape == saved.shape and buf.dtype == saved.dtype:
                    buf.copy_(saved)
                else:
                    mod._buffers[key] = saved.clone()
        torch.manual_seed(_SEED)
        random.seed(_SEED)
        np.random.seed(_SEED)

    def run(self) -> list[torch.Tensor]:
        """One no-grad forward pass from the saved state."""
        self._reset()
        with torch.no_grad():
            return [t.detach() for t in _float_tensors(self._forward())]

    def _forward(self) -> Any:
        try:
            return _call(self.model, self.input)
        except Exception as exc:
            raise ValueError(
                f"classify could not run the model on {self.source} example input "
                f"({type(exc).__name__}: {exc}); pass example_input=... that the model accepts "
                "or probe=False"
            ) from exc

    def output_module_ids(self, candidates: list[nn.Module]) -> set[int]:
        """id of the copy's output layer: the last-finishing candidate upstream of the output."""
        finished: list[tuple[nn.Module, list[Any]]] = []

        def hook(mod: nn.Module, _inp: Any, out: Any) -> None:
            fns = [t.grad_fn for t in _float_tensors(out) if t.grad_fn is not None]
            finished.append((mod, fns))

        handles = [m.register_forward_hook(hook) for m in candidates]
        try:
            self._reset()
            with torch.enable_grad():
                outputs = list(_float_tensors(self._forward()))
        finally:
            for h in handles:
                h.remove()
        if not outputs:
            raise ValueError(
                f"the model returned no floating-point tensor on {self.source} example input; "
                "classify compares outputs, so pass example_input=... or probe=False"
            )
        reachable: set[int] = set()
        stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
        while stack:
            fn = stack.pop()
            if fn is None or id(fn) in reachable:
                continue
            reachable.add(id(fn))
            stack.extend(nxt for nxt, _ in fn.next_functions)
        connected = [m for m, fns in finished if any(id(f) in reachable for f in fns)]
        if connected:
            return {id(connected[-1])}
        # No autograd graph (forward under no_grad): fall back to execution order alone.
        return {id(finished[-1][0])} if finished else set()

    def change(self, param: torch.Tensor, base: list[torch.Tensor]) -> float:
        """Largest relative output change over PROBE_SCALES when `param` is scaled."""
        saved = param.detach().clone()
        worst = 0.0
        try:
            for c in PROBE_SCALES:
                with torch.no_grad():
                    param.mul_(c)
                try:
                    new = self.run()
                except ValueError:  # the model refuses the scaled weight: not invariant
                    return math.inf
                worst = max(worst, _relative_change(base, new))
                with torch.no_grad():
                    param.copy_(saved)
        finally:
            with torch.no_grad():
                param.copy_(saved)
        return worst


# --------------------------------------------------------------------------- classify


def _type_name(m: nn.Module) -> str:
    # parametrize swaps the class for a generated subclass "Parametrized<Name>"
    cls = type(m).__bases__[0] if parametrize.is_parametrized(m) else type(m)
    return cls.__name__


def _rng_devices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def classify(
    model: nn.Module,
    example_input: Any = None,
    *,
    decay_embedding: bool = True,
    decay_output: bool = True,
    probe: bool = True,
    probe_vectors: bool = False,
) -> list[ParamInfo]:
    """Role, scale invariance and decay of every trainable parameter, each listed once.

    The caller's model is never run or modified: probing uses a deep copy, and the
    global RNG states (torch, random, numpy) are restored afterwards. `probe=False` runs
    nothing: scale_invariant is then False and the output layer is the last registered
    module with a >= 2-D weight. `probe_vectors` also probes 0/1-D parameters.
    """
    inner = _unwrap(model)
    for flag, value in (("decay_embedding", decay_embedding), ("decay_output", decay_output)):
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be True or False, got {value!r}")
    entries = _entries(inner)
    if not entries:
        return []
    roles = [_fixed_role(e) for e in entries]
    any_declared_output = any(r == "output" for r in roles)
    modules = list(inner.modules())
    index = {id(m): i for i, m in enumerate(modules)}

    # Output candidates: innermost non-embedding modules that own a >= 2-D weight (frozen
    # ones too: a frozen head is still the head, and must not push the role onto the body).
    def owns_matrix(m: nn.Module) -> bool:
        own = m._parameters.values()
        return not isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and any(
            p is not None and p.ndim >= 2 for p in own
        )

    owning = [m for m in modules if owns_matrix(m)]
    candidates = [m for m in owning if not any(owns_matrix(d) for d in m.modules() if d is not m)]

    changes: list[float | None] = [None] * len(entries)
    output_idx: set[int] = set()  # indices into `modules`
    if probe:
        with torch.random.fork_rng(devices=_rng_devices(inner)):
            py_state, np_state = random.getstate(), np.random.get_state()
            try:
                torch.manual_seed(_SEED)
                prober = _Probe(inner, example_input)
                copies = list(prober.model.modules())
                out_ids = set()
                if not any_declared_output:
                    out_ids = prober.output_module_ids([copies[index[id(m)]] for m in candidates])
                output_idx = {i for i, m in enumerate(copies) if id(m) in out_ids}
                base = prober.run()
                noise = _relative_change(base, prober.run())
                if noise > PROBE_TOL / 100:
                    raise ValueError(
                        f"the model's output changed by {noise:.1e} (relative) between two "
                        "identical train-mode forwards; make it deterministic under "
                        "torch.manual_seed or pass probe=False"
                    )
                copy_params = dict(prober.model.named_parameters(remove_duplicate=False))
                for i, e in enumerate(entries):
                    if e.param.ndim >= 2 or probe_vectors:
                        changes[i] = prober.change(copy_params[e.names[0]], base)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
    elif not any_declared_output and candidates:
        output_idx = {index[id(candidates[-1])]}

    infos = []
    for e, role, change in zip(entries, roles, changes, strict=True):
        if role is None:
            in_output = any(index[id(m)] in output_idx for m, _ in e.owners)
            role = "output" if in_output else "matrix"
        decay = {
            "matrix": True,
            "embedding": decay_embedding,
            "output": decay_output,
        }.get(role, False)
        owner, _ = e.owners[0]
        infos.append(
            ParamInfo(
                name=e.names[0],
                shape=tuple(e.param.shape),
                role=role,
                scale_invariant=change is not None and change <= PROBE_TOL,
                decay=decay,
                numel=e.param.numel(),
                module_type=_type_name(owner),
                tied_to=tuple(e.names[1:]),
                probe_change=change,
            )
        )
    return infos


# --------------------------------------------------------------------------- input weights


def _tensors(x: Any) -> Iterator[torch.Tensor]:
    """Every tensor (of any dtype) in a tensor / tuple / list / dict input."""
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, Mapping):
        for value in x.values():
            yield from _tensors(value)
    elif isinstance(x, (tuple, list)):
        for item in x:
            yield from _tensors(item)


def input_weights(model: nn.Module, example_input: Any = None) -> set[str]:
    """Names of >= 2-D weights of modules that read the model's input tensor itself.

    Width-scaling rules need them: such a weight's fan_in is the data's dimension, which
    does not grow with the model's width, so μP treats it like an embedding. Found with one
    eval-mode, no-grad forward of the model (hooks see which module receives the input
    tensor object); training flags and RNG states are restored, nothing else is touched.
    """
    inner = _unwrap(model)
    if example_input is None and callable(getattr(inner, "example_input", None)):
        example_input = inner.example_input()
    elif example_input is None:
        example_input, _ = _infer_input(inner)
    leaves = [(n, m) for n, m in inner.named_modules() if _is_layer(m)]
    flat = list(_tensors(example_input))
    fed: set[str] = set()

    def pre_hook(name: str) -> Any:
        def hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            for a in (*args, *kwargs.values()):
                if isinstance(a, torch.Tensor) and any(a is t for t in flat):
                    fed.add(name)

        return hook

    modes = {m: m.training for m in inner.modules()}
    handles = [m.register_forward_pre_hook(pre_hook(n), with_kwargs=True) for n, m in leaves]
    try:
        with torch.random.fork_rng(devices=_rng_devices(inner)), torch.no_grad():
            py_state, np_state = random.getstate(), np.random.get_state()
            inner.eval()
            try:
                _call(inner, example_input)
            except Exception as exc:
                raise ValueError(
                    f"could not run the model on the example input to find its input weights "
                    f"({type(exc).__name__}: {exc}); pass example_input=... the model accepts"
                ) from exc
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    names = set()
    for prefix, module in leaves:
        if prefix in fed and not isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            for local, p in module.named_parameters(recurse=True):
                if p.ndim >= 2 and p.requires_grad:
                    names.add(f"{prefix}.{local}" if prefix else local)
    first_names = {e.names[0] for e in _entries(inner)}
    return names & first_names


# --------------------------------------------------------------------------- param groups


def _check_number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{field} must be a number >= 0, got {value!r}")
    return float(value)


def _check_overrides(overrides: Any) -> dict[str, dict[str, Any]]:
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ValueError(
            "overrides must be a dict {name pattern: {'lr'|'weight_decay'|'decay': value}}, "
            f"got {type(overrides).__name__}"
        )
    checked: dict[str, dict[str, Any]] = {}
    for pattern, settings in overrides.items():
        if not isinstance(pattern, str) or not isinstance(settings, Mapping):
            raise ValueError(
                f"overrides[{pattern!r}] must map a name pattern (str) to a dict of settings"
            )
        for key, value in settings.items():
            field = f"overrides[{pattern!r}][{key!r}]"
            if key not in _OVERRIDE_KEYS:
                raise ValueError(f"{field} is not a setting; allowed: {', '.join(_OVERRIDE_KEYS)}")
            if key == "decay":
                if not isinstance(value, bool):
                    raise ValueError(f"{field} must be True or False, got {value!r}")
            else:
                _check_number(field, value)
        if settings.get("decay") is False and settings.get("weight_decay", 0) != 0:
            raise ValueError(
                f"overrides[{pattern!r}] sets decay=False and weight_decay="
                f"{settings['weight_decay']!r}; keep one of them"
            )
        checked[pattern] = dict(settings)
    return checked


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    *,
    example_input: Any = None,
    decay_embedding: bool = True,
    decay_output: bool = True,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    infos: list[ParamInfo] | None = None,
    probe: bool = True,
    scaling: str | None = None,
    base_width: int | None = None,
    width: int | None = None,
    decay_mode: str = "decoupled",
) -> list[dict[str, Any]]:
    """Parameter groups any torch optimizer accepts, one per distinct setting.

    Each group: params, param_names (torch's convention for named parameters), lr,
    weight_decay (0.0 where the parameter does not decay), role, scale_invariant.
    `overrides` maps fnmatch patterns over parameter names (any of a tied parameter's
    names) to {"lr", "weight_decay", "decay"}; later patterns win; a pattern that matches
    nothing is an error. `infos` reuses an earlier classify() result instead of probing
    (its decay flags then stand; decay_embedding/decay_output/probe are not used).

    `scaling` (a wdlab.scaling rule) treats lr and weight_decay as tuned at `base_width` and
    scales them per role for `width` (default: model.width); `decay_mode` is the optimizer's
    decay ("decoupled" | "independent" | "l2"). Overrides are absolute and win over scaling.
    Init and multipliers are wdlab.scaling.apply_init's job (create_optimizer calls both).
    """
    lr = _check_number("lr", lr)
    weight_decay = _check_number("weight_decay", weight_decay)
    checked = _check_overrides(overrides)
    inner = _unwrap(model)
    if scaling is None and (base_width is not None or width is not None):
        raise ValueError(
            "base_width/width are only used with scaling=...; pass scaling='mup' (or another "
            "wdlab.scaling rule) or drop them"
        )
    if infos is None:
        infos = classify(
            inner,
            example_input,
            decay_embedding=decay_embedding,
            decay_output=decay_output,
            probe=probe,
        )
    entries = {e.names[0]: e for e in _entries(inner)}
    given = {i.name for i in infos}
    if given != set(entries):
        missing = sorted(set(entries) - given) + sorted(given - set(entries))
        raise ValueError(
            f"infos do not match the model's trainable parameters (e.g. {missing[0]!r}); "
            "pass infos=classify(model) for this model"
        )

    per_param = {}
    if scaling is not None:
        from wdlab import scaling as rules  # scaling builds on this module

        width = width if width is not None else getattr(inner, "width", None)
        if width is None:
            raise ValueError(
                f"scaling needs the model's width: pass width=... ({type(inner).__name__} has "
                "no .width; the workload's width is Workload.width)"
            )
        m = rules.check_scaling(scaling, base_width, width)
        scales = rules.role_scales(scaling, m, decay_mode=decay_mode)
        inputs = input_weights(inner, example_input) if scaling != "sp" and probe else set()
        per_param = rules.scaled_settings(infos, inputs, scales)

    matched = dict.fromkeys(checked, False)
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for info in infos:
        p_lr, p_decay, p_wd = lr, info.decay, weight_decay
        if info.name in per_param:
            p_lr = lr * per_param[info.name].lr_mult
            p_wd = weight_decay * per_param[info.name].wd_mult
        for pattern, settings in checked.items():
            names = (info.name, *info.tied_to)
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                continue
            matched[pattern] = True
            p_lr = settings.get("lr", p_lr)
            if "weight_decay" in settings:
                p_wd, p_decay = settings["weight_decay"], True
            p_decay = settings.get("decay", p_decay)
        wd = float(p_wd) if p_decay else 0.0
        key = (info.role, info.scale_invariant, float(p_lr), wd)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {
                "params": [],
                "param_names": [],
                "lr": float(p_lr),
                "weight_decay": wd,
                "role": info.role,
                "scale_invariant": info.scale_invariant,
            }
        group["params"].append(entries[info.name].param)
        group["param_names"].append(info.name)
    unmatched = [p for p, hit in matched.items() if not hit]
    if unmatched:
        raise ValueError(
            f"overrides pattern {unmatched[0]!r} matches no trainable parameter; "
            "check the names with wdlab.classify(model) (fnmatch syntax, case-sensitive)"
        )
    return list(groups.values())
