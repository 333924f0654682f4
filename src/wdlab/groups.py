"""Which parameter is what: role, scale invariance (probed) and decay; torch param groups.

Roles decide weight decay now and width scaling later (REFERENCE.md §4), so they follow
what a parameter *does* (module type, place in the forward pass), not its name.
Scale invariance (REFERENCE.md §2: f(c·w) = f(w)) is measured, not guessed, on a replica of
the model that shares its tensors (wdlab.probe): one forward and one backward rule out
every weight whose scaling moves the output to first order, and the few weights left are
scaled by 2, 1/2 and 2**20 inside the smallest enclosing module whose output they cannot
move, in float64. docs/grouping.md explains every rule and default.
"""

from __future__ import annotations

import fnmatch
import hashlib
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from wdlab._names import ROLES
from wdlab._probe import PROBE_SCALES, PROBE_TOL, SCREEN_TOL
from wdlab.scaling.rules import RoleScale, check_scaling, role_scales

__all__ = [
    "ROLES",
    "ParamInfo",
    "classify",
    "input_weights",
    "param_groups",
    "scaled_settings",
    "table",
    "PROBE_SCALES",
    "PROBE_TOL",
    "SCREEN_TOL",
]

# PROBE_SCALES, PROBE_TOL and SCREEN_TOL are explained in wdlab._probe and docs/grouping.md.
_OVERRIDE_KEYS = ("weight_decay", "lr", "decay")
_CACHE_ATTR = "_wdlab_classify_cache"


@dataclass(frozen=True)
class ParamInfo:
    """What wdlab decided about one trainable parameter (one row of `wdlab inspect`).

    name: the parameter's first name in the (unwrapped) model; tied_to: its other names.
    probe_change: the probe's evidence (None if not probed): for a weight the first-order
    screen ruled out, the relative size of its directional derivative (> SCREEN_TOL); else
    the largest relative output change seen when scaling it; scale_invariant is
    probe_change <= PROBE_TOL.
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
    of those attributes, so names match the inner model. FSDP2 (`fully_shard`) changes the
    modules' classes in place and needs no unwrapping.
    """
    from wdlab._probe import unwrap

    return unwrap(model)


@dataclass
class _Entry:
    """One unique parameter with every (name, owning module, local name) it appears under."""

    param: nn.Parameter
    names: list[str]
    owners: list[tuple[nn.Module, str]]
    paths: list[str]  # the owning modules' names, one per owner


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str, str]:
    """The module a parameter name belongs to, its local name and the module's name;
    parametrized weights resolve to their module."""
    path, _, local = name.rpartition(".")
    parts = path.split(".") if path else []
    # torch.nn.utils.parametrize: "<mod>.parametrizations.<weight>.original[N]"
    if len(parts) >= 2 and parts[-2] == "parametrizations" and local.startswith("original"):
        local = parts[-1]
        parts = parts[:-2]
    path = ".".join(parts)
    return model.get_submodule(path), local, path


def _entries(model: nn.Module) -> list[_Entry]:
    """Trainable parameters, each once, in named_parameters order (frozen ones skipped)."""
    by_id: dict[int, _Entry] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if not p.requires_grad:
            continue
        entry = by_id.get(id(p))
        if entry is None:
            entry = by_id[id(p)] = _Entry(p, [], [], [])
        module, local, path = _owner(model, name)
        entry.names.append(name)
        entry.owners.append((module, local))
        entry.paths.append(path)
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


# Modules whose >= 2-D weight is a linear map whatever its shape (a conv with one output
# channel has weight (1, C, k, k): still a matrix).
_WEIGHT_MODULES = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)


def _is_position(module: nn.Module, param: torch.Tensor) -> bool:
    """A (1, T, D)-like parameter added to activations (ViT's pos_embed, a cls token): its
    leading 1 broadcasts over the batch, so it is an embedding, not a matrix."""
    return param.ndim >= 3 and param.shape[0] == 1 and not isinstance(module, _WEIGHT_MODULES)


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
    if emb or all(_is_position(m, p) for m, _ in entry.owners):
        return "embedding"
    if any(_is_bias(n, p) for _, n in entry.owners):
        return "bias"
    if p.ndim <= 1:
        return "vector"
    return None


def _no_decay_names(model: nn.Module, names: list[str]) -> set[str]:
    """Parameter names a module excludes from decay, timm's way: `no_weight_decay()` (names
    or fnmatch patterns, relative to that module) and `no_weight_decay_keywords()`
    (substrings). Any module of the model may define them, not only the root."""
    out: set[str] = set()
    for prefix, module in model.named_modules():
        lead = f"{prefix}." if prefix else ""
        for method, match in (
            ("no_weight_decay", lambda n, pat: n == pat or fnmatch.fnmatchcase(n, pat)),
            ("no_weight_decay_keywords", lambda n, kw: kw in n),
        ):
            fn = getattr(module, method, None)
            if not callable(fn):
                continue
            patterns = fn()
            if isinstance(patterns, str) or not all(isinstance(x, str) for x in patterns):
                raise ValueError(
                    f"{type(module).__name__}.{method}() must return a set of parameter "
                    f"names, got {patterns!r}"
                )
            for name in names:
                if name.startswith(lead) and any(match(name[len(lead):], x) for x in patterns):
                    out.add(name)
    return out


def _type_name(m: nn.Module) -> str:
    from wdlab._probe import plain_class

    cls = plain_class(m)
    # parametrize swaps the class for a generated subclass "Parametrized<Name>"
    if parametrize.is_parametrized(m):
        cls = cls.__bases__[0]
    return cls.__name__


# --------------------------------------------------------------------------- classify


def _fingerprint(x: Any) -> Any:
    """A hashable summary of an example input (tensor contents included) for the cache."""
    if isinstance(x, torch.Tensor):
        if x.is_meta or x.numel() > 1 << 20:
            return ("tensor", tuple(x.shape), str(x.dtype), id(x), x._version)
        data = x.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        return ("tensor", tuple(x.shape), str(x.dtype), hashlib.sha1(data).hexdigest())
    if isinstance(x, Mapping):
        return ("map", tuple((k, _fingerprint(v)) for k, v in x.items()))
    if isinstance(x, (tuple, list)):
        return ("seq", tuple(_fingerprint(v) for v in x))
    try:
        hash(x)
    except TypeError:
        return ("object", id(x))
    return x


def _version(t: torch.Tensor) -> tuple[int, ...]:
    local = getattr(t, "_local_tensor", None)  # DTensor: in-place updates bump the shard
    return (t._version,) if local is None else (t._version, local._version)


def _cache_key(model: nn.Module, *args: Any) -> tuple[Any, ...]:
    """Changes when a parameter is added, removed, replaced, reshaped, frozen or updated in
    place, when a module is swapped, or when the arguments or example input change."""
    params = tuple(
        (n, id(p), tuple(p.shape), str(p.dtype), p.requires_grad, _version(p))
        for n, p in model.named_parameters(remove_duplicate=False)
    )
    modules = tuple((n, id(m), type(m)) for n, m in model.named_modules())
    return (params, modules, *args)


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

    The caller's model is never run or modified (the probe runs a replica sharing its
    tensors), and the global RNG states (torch, random, numpy) are restored afterwards.
    Works on DDP-wrapped, torch.compile'd, FSDP2-sharded (call it on every rank: sharded
    parameters are gathered) and meta-device models (probed on random values). The result
    is cached on the model until a parameter changes. `probe=False` runs nothing:
    scale_invariant is then False and the output layer is the last registered module with
    a >= 2-D weight. `probe_vectors` also probes 0/1-D parameters. Names a module lists in
    timm's `no_weight_decay()` / `no_weight_decay_keywords()` do not decay.
    """
    inner = _unwrap(model)
    for flag, value in (("decay_embedding", decay_embedding), ("decay_output", decay_output)):
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be True or False, got {value!r}")
    key = _cache_key(
        inner, decay_embedding, decay_output, probe, probe_vectors, _fingerprint(example_input)
    )
    cached = inner.__dict__.get(_CACHE_ATTR)
    if cached is not None and cached[0] == key:
        return list(cached[1])
    infos = _classify(inner, example_input, decay_embedding, decay_output, probe, probe_vectors)
    inner.__dict__[_CACHE_ATTR] = (key, tuple(infos))
    return infos


def _classify(
    inner: nn.Module,
    example_input: Any,
    decay_embedding: bool,
    decay_output: bool,
    probe: bool,
    probe_vectors: bool,
) -> list[ParamInfo]:
    entries = _entries(inner)
    if not entries:
        return []
    roles = [_fixed_role(e) for e in entries]
    any_declared_output = any(r == "output" for r in roles)
    no_decay = _no_decay_names(inner, [n for e in entries for n in e.names])
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
        from wdlab._probe import Probe

        probed = [e.param.ndim >= 2 or probe_vectors for e in entries]
        with torch.random.fork_rng(devices=_rng_devices(inner)):
            py_state, np_state = random.getstate(), np.random.get_state()
            try:
                prober = Probe(inner, example_input)
                out_mods = prober.output_modules(
                    [] if any_declared_output else candidates
                )
                output_idx = {index[id(m)] for m in out_mods}
                changes = prober.changes(
                    [(e.param, list(zip(e.owners, e.paths, e.names, strict=True))) if keep else None
                     for e, keep in zip(entries, probed, strict=True)]
                )
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
        if any(n in no_decay for n in e.names):
            decay = False
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


def _rng_devices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


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
    eval-mode, no-grad forward of a replica of the model sharing its tensors (hooks see
    which module receives the input tensor object); the caller's model is not run.
    """
    from wdlab._probe import Probe, is_layer

    inner = _unwrap(model)
    with torch.random.fork_rng(devices=_rng_devices(inner)):
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            fed = Probe(inner, example_input, screen=False).modules_fed_by_input()
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
    names = set()
    for prefix, module in inner.named_modules():
        if is_layer(module) and id(module) in fed and not isinstance(
            module, (nn.Embedding, nn.EmbeddingBag)
        ):
            for local, p in module.named_parameters(recurse=True):
                if p.ndim >= 2 and p.requires_grad:
                    names.add(f"{prefix}.{local}" if prefix else local)
    first_names = {e.names[0] for e in _entries(inner)}
    return names & first_names


# --------------------------------------------------------------------------- param groups


def scaled_settings(
    infos: list[ParamInfo], inputs: set[str], scales: Mapping[str, RoleScale]
) -> dict[str, RoleScale]:
    """The RoleScale of each parameter name (input weights are matrices fed by the data)."""
    out = {}
    for info in infos:
        role = "input" if info.role == "matrix" and info.name in inputs else info.role
        out[info.name] = scales[role]
    return out


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
        width = width if width is not None else getattr(inner, "width", None)
        if width is None:
            raise ValueError(
                f"scaling needs the model's width: pass width=... ({type(inner).__name__} has "
                "no .width; the workload's width is Workload.width)"
            )
        m = check_scaling(scaling, base_width, width)
        scales = role_scales(scaling, m, decay_mode=decay_mode)
        inputs = input_weights(inner, example_input) if scaling != "sp" and probe else set()
        per_param = scaled_settings(infos, inputs, scales)

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


def table(infos: Sequence[ParamInfo]) -> str:
    """classify's verdicts as an aligned plain-text table, one row per parameter, with the
    totals below: `print(wdlab.groups.table(wdlab.classify(model)))`."""
    header = ("name", "shape", "role", "module", "scale-inv.", "decay", "numel")
    rows = [
        (
            info.name + (f" (= {', '.join(info.tied_to)})" if info.tied_to else ""),
            "x".join(map(str, info.shape)) or "scalar",
            info.role,
            info.module_type,
            "yes" if info.scale_invariant else "",
            "yes" if info.decay else "",
            f"{info.numel:,}",
        )
        for info in infos
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i == len(cells) - 1 else c.ljust(w)
                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(parts).rstrip()

    total = sum(i.numel for i in infos)
    decayed = sum(i.numel for i in infos if i.decay)
    invariant = sum(i.numel for i in infos if i.scale_invariant)
    lines = [line(header), line(tuple("-" * w for w in widths)), *map(line, rows)]
    lines.append(f"{total:,} parameters; {decayed:,} decayed; {invariant:,} scale-invariant")
    return "\n".join(lines)
