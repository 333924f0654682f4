"""Every optimizer on CUDA (impl="auto", i.e. the foreach path) against the CPU float64 result.

Skipped without a GPU. The same builders, weights and gradients as
tests/test_optim_dispatch.py; float32 on the GPU, so the tolerance is float32's (Muon: its
Newton-Schulz in bfloat16 on GPUs, so bfloat16's).
"""

from __future__ import annotations

import pytest
import torch
from test_optim_dispatch import BUILDERS, FAMILIES, FAMILY, STEPS, _grad, _model_params, _weights

from wdlab.optim.opcount import count_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _run_on(build, device: str, dtype: torch.dtype, impl: str = "auto") -> list[torch.Tensor]:
    weights = _weights(torch.float64)
    params = [torch.nn.Parameter(w.to(device=device, dtype=dtype)) for w in weights]
    opt = build(params, impl)
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        for i, p in enumerate(params):
            # The gradient is built in float64 on the CPU from the current weights, then moved.
            p.grad = _grad(p.detach().cpu().double(), i, gen).to(device=device, dtype=dtype)
        opt.step()
    return [p.detach().cpu().double() for p in params]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_cuda_matches_cpu_float64(name: str) -> None:
    want = _run_on(BUILDERS[name], "cpu", torch.float64, impl="reference")
    got = _run_on(BUILDERS[name], "cuda", torch.float32)
    tol = {"rtol": 1e-4, "atol": 1e-5}
    if FAMILY[name] == "lion":  # sign(): an element near 0 may flip; compare the bulk
        close = torch.isclose(torch.cat([g.flatten() for g in got]),
                              torch.cat([w.flatten() for w in want]), **tol)
        assert close.float().mean() > 0.999
        return
    for i, (x, y) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(x, y, **tol, msg=lambda m, i=i: f"{name} tensor {i}: {m}")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_cuda_step_makes_no_host_sync(name: str) -> None:
    params = [torch.nn.Parameter(p.detach().cuda()) for p in _model_params()]
    for p, q in zip(params, _model_params(), strict=True):
        p.grad = q.grad.cuda()
    opt = FAMILIES[name](params)
    opt.step()
    count = count_step(opt)
    assert count.syncs == [], f"{name}: {count.syncs}"
