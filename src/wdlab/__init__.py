"""wdlab: weight decay, normalization and learning-rate scale, done right."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "classify", "param_groups", "create_optimizer"]


def __getattr__(attr: str):  # lazy: `import wdlab` must not import torch-heavy rooms
    if attr in ("classify", "param_groups", "ParamInfo"):
        from wdlab import groups

        return getattr(groups, attr)
    if attr == "create_optimizer":
        from wdlab.factory import create_optimizer

        return create_optimizer
    raise AttributeError(f"module 'wdlab' has no attribute {attr!r}")
