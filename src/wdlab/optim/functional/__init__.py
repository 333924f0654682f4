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
"""

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
from wdlab.optim.functional.adamw import adamw_foreach, adamw_step
from wdlab.optim.functional.fadam import fadam_foreach, fadam_step
from wdlab.optim.functional.lion import lion_foreach, lion_step
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
from wdlab.optim.functional.novograd import novograd_foreach, novograd_step
from wdlab.optim.functional.scale import scale_foreach, scale_step
from wdlab.optim.functional.schedule_free import schedule_free_foreach, schedule_free_step
from wdlab.optim.functional.sgdw import sgdw_foreach, sgdw_step

__all__ = [
    "CHUNK_NUMEL",
    "EAGER_MODES",
    "ELEMENTWISE_MODES",
    "NS_COEFFICIENTS",
    "NS_PRESETS",
    "SPLITS",
    "UPDATE_SCALES",
    "VIEWS",
    "MuonSettings",
    "NsCoefficients",
    "Quintic",
    "Split",
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
