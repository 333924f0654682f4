"""Fixtures more than one test file uses (pytest finds them here by name)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import torch


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the C kernels looked up (every native path goes through native.kernel)."""
    from wdlab.optim import _native as native  # here: collecting other tests needs no torch

    calls: list[str] = []
    real = native.kernel

    def spy(name: str, dtype: torch.dtype) -> Any:
        calls.append(name)
        return real(name, dtype)

    monkeypatch.setattr(native, "kernel", spy)
    return calls
