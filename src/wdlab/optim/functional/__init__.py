"""The update math of wdlab's optimizers as plain functions over lists of tensors.

Classes in wdlab.optim keep state and validate; these functions only compute, so a fast path
can replace the math without touching the bookkeeping. One module per family, each holding
that family's paths under names that say which is which (wdlab.optim._dispatch picks one per
param group and device from the `impl=` keyword):
  <family>_step       the reference path (plain torch ops per tensor, on CPU cut into
                      cache-sized blocks); also runs the native and fused paths where its
                      `mode=` / `fused=` argument asks for them
  _<family>_reference the per-block update the reference path runs
  _<family>_native... kernels.c (wdlab.optim._native) calls
  _<family>_fused     torch's fused Adam/SGD kernels
  _<family>_compiled  the update torch.compile compiles (impl="compiled")
  <family>_foreach    torch._foreach_* per (device, dtype), no host sync inside step()
Shared machinery (resolve_mode, foreach_elementwise, the fused-kernel checks) is in _common.

The names load on first use (PEP 562): reading one family module, as run --help does for
its constants without torch, then does not import torch through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wdlab.optim.functional._common import (
        CHUNK_NUMEL,
        EAGER_MODES,
        ELEMENTWISE_MODES,
        foreach_elementwise,
        resolve_mode,
        step_values,
    )
    from wdlab.optim.functional.adamp import (
        VIEWS,
        adamp_compiled,
        adamp_foreach,
        adamp_project,
        adamp_step,
        scale_invariant_view,
        sgdp_compiled,
        sgdp_foreach,
        sgdp_step,
    )
    from wdlab.optim.functional.adamw import (
        adamw_foreach,
        adamw_step,
    )
    from wdlab.optim.functional.fadam import (
        fadam_foreach,
        fadam_step,
    )
    from wdlab.optim.functional.lion import (
        lion_foreach,
        lion_step,
    )
    from wdlab.optim.functional.muon import (
        NS_COEFFICIENTS,
        NS_PRESETS,
        SPLITS,
        UPDATE_SCALES,
        MuonSettings,
        NsCoefficients,
        Quintic,
        Split,
        check_ns_coefficients,
        muon_direction,
        muon_foreach,
        muon_scale,
        muon_step,
        muon_update,
        newton_schulz,
        newton_schulz_batched,
        normuon_normalize,
        normuon_state_like,
        ns_schedule,
        orthogonalize,
        parse_split,
    )
    from wdlab.optim.functional.novograd import (
        novograd_foreach,
        novograd_step,
    )
    from wdlab.optim.functional.scale import (
        scale_foreach,
        scale_step,
    )
    from wdlab.optim.functional.schedule_free import (
        schedule_free_foreach,
        schedule_free_step,
    )
    from wdlab.optim.functional.sgdw import (
        sgdw_foreach,
        sgdw_step,
    )

_WHERE: dict[str, str] = {
    "CHUNK_NUMEL": "_common",
    "EAGER_MODES": "_common",
    "ELEMENTWISE_MODES": "_common",
    "MuonSettings": "muon",
    "NS_COEFFICIENTS": "muon",
    "NS_PRESETS": "muon",
    "NsCoefficients": "muon",
    "Quintic": "muon",
    "SPLITS": "muon",
    "Split": "muon",
    "UPDATE_SCALES": "muon",
    "VIEWS": "adamp",
    "adamp_compiled": "adamp",
    "adamp_foreach": "adamp",
    "adamp_project": "adamp",
    "adamp_step": "adamp",
    "adamw_foreach": "adamw",
    "adamw_step": "adamw",
    "check_ns_coefficients": "muon",
    "fadam_foreach": "fadam",
    "fadam_step": "fadam",
    "foreach_elementwise": "_common",
    "lion_foreach": "lion",
    "lion_step": "lion",
    "muon_direction": "muon",
    "muon_foreach": "muon",
    "muon_scale": "muon",
    "muon_step": "muon",
    "muon_update": "muon",
    "newton_schulz": "muon",
    "newton_schulz_batched": "muon",
    "normuon_normalize": "muon",
    "normuon_state_like": "muon",
    "novograd_foreach": "novograd",
    "novograd_step": "novograd",
    "ns_schedule": "muon",
    "orthogonalize": "muon",
    "parse_split": "muon",
    "resolve_mode": "_common",
    "scale_foreach": "scale",
    "scale_invariant_view": "adamp",
    "scale_step": "scale",
    "schedule_free_foreach": "schedule_free",
    "schedule_free_step": "schedule_free",
    "sgdp_compiled": "adamp",
    "sgdp_foreach": "adamp",
    "sgdp_step": "adamp",
    "sgdw_foreach": "sgdw",
    "sgdw_step": "sgdw",
    "step_values": "_common",
}
"""Each public name and the family module that defines it."""

__all__ = [
    "CHUNK_NUMEL",
    "EAGER_MODES",
    "ELEMENTWISE_MODES",
    "MuonSettings",
    "NS_COEFFICIENTS",
    "NS_PRESETS",
    "NsCoefficients",
    "Quintic",
    "SPLITS",
    "Split",
    "UPDATE_SCALES",
    "VIEWS",
    "adamp_compiled",
    "adamp_foreach",
    "adamp_project",
    "adamp_step",
    "adamw_foreach",
    "adamw_step",
    "check_ns_coefficients",
    "fadam_foreach",
    "fadam_step",
    "foreach_elementwise",
    "lion_foreach",
    "lion_step",
    "muon_direction",
    "muon_foreach",
    "muon_scale",
    "muon_step",
    "muon_update",
    "newton_schulz",
    "newton_schulz_batched",
    "normuon_normalize",
    "normuon_state_like",
    "novograd_foreach",
    "novograd_step",
    "ns_schedule",
    "orthogonalize",
    "parse_split",
    "resolve_mode",
    "scale_foreach",
    "scale_invariant_view",
    "scale_step",
    "schedule_free_foreach",
    "schedule_free_step",
    "sgdp_compiled",
    "sgdp_foreach",
    "sgdp_step",
    "sgdw_foreach",
    "sgdw_step",
    "step_values",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
