"""The update math of wdlab's optimizers as plain functions over lists of tensors.

Classes in this package keep state and validate; these functions only compute, so a
fused or compiled path can replace the math without touching the bookkeeping.
"""

from __future__ import annotations

# ---- shared elementwise machinery (AdamW, SGDW, Lion, AdamP, SGDP) -------------------------

# ---- Newton-Schulz orthogonalization (Muon) --------------------------------------------------
