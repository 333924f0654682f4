"""Claims: the research wdlab implements, re-run in one command and judged with seeds.

Each claim lives in its own module (one class: source, statement, setup as sweeps, the
statistic, the one-sided test over seeds, the analysis); this registry names them. `wdlab
claims list | run NAME [--quick] | report` is the command line (wdlab.cli.claims);
runner.py runs the sweeps and judges a claim from the store; page.py writes the HTML.
"""

from __future__ import annotations

import difflib
import importlib

from wdlab.claims.base import Claim
from wdlab.errors import WdlabError

# claim name -> (module in wdlab.claims, class)
_REGISTRY: dict[str, tuple[str, str]] = {
    "grokking-needs-wd": ("grokking", "GrokkingNeedsWd"),
    "decoupled-wd-ridge": ("decoupled", "DecoupledRidge"),
    "adamp-norm-growth": ("adamp", "AdamPNormGrowth"),
    "lion-linf-bound": ("lion", "LionBound"),
    "angular-equilibrium": ("equilibrium", "AngularEquilibrium"),
    "rotational-warmup": ("rotational", "RotationalWarmup"),
    "qk-norm-z-loss": ("qk_norm", "QkNormZLoss"),
    "sigma-reparam-entropy": ("sigma_reparam", "SigmaReparamEntropy"),
    "tau-epoch-dataset-size": ("tau_epoch", "TauEpochDatasetSize"),
    "wd-grows-with-batch": ("batch_wd", "WdGrowsWithBatch"),
    "linear-to-zero": ("schedule", "LinearToZero"),
    "corrected-decay-grad-norm": ("corrected", "CorrectedDecayGradNorm"),
    "wd-rare-tokens-first": ("rare_tokens", "RareTokensFirst"),
    "mup-independent-wd": ("mup_wd", "MupIndependentWd"),
}

__all__ = ["Claim", "available", "get", "all_claims"]


def available() -> list[str]:
    """Claim names in registry order (the order `claims list` and the report use)."""
    return list(_REGISTRY)


def get(name: str) -> Claim:
    """The claim registered as `name`; an unknown name raises one line with a suggestion."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, available(), n=1, cutoff=0.4)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise WdlabError(
            f"unknown claim {name!r}; {hint}list them with `wdlab claims list`", field="claim"
        )
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(f"wdlab.claims.{module}"), cls)()


def all_claims() -> list[Claim]:
    return [get(name) for name in available()]
