"""wdlab._compat: each feature-checked helper equals torch's API where torch has it, and its
fallback (the path an older torch takes) computes the same quantity."""

from __future__ import annotations

import pytest
import torch

from wdlab import _compat


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_total_norm_native_and_fallback_agree(monkeypatch, norm_type) -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(7, 3, generator=gen), torch.randn(5, generator=gen), None]
    flat = torch.cat([t.reshape(-1) for t in tensors if t is not None])
    expected = torch.linalg.vector_norm(flat.double(), norm_type).float()
    native = _compat.total_norm(tensors, norm_type)
    monkeypatch.delattr(torch.nn.utils, "get_total_norm", raising=False)
    fallback = _compat.total_norm(tensors, norm_type)
    torch.testing.assert_close(native, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(fallback, expected, rtol=1e-6, atol=0)
    assert float(_compat.total_norm([], norm_type)) == 0.0
