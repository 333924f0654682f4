"""How close Newton-Schulz gets to the polar factor U V^T: Jordan's fixed quintic against
Polar Express at the same iteration counts (docs/optimizers.md's table). Not part of pytest.

    python benchmarks/polar_express.py [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse

import torch

from wdlab.optim.functional import newton_schulz


def matrices() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(128, 128, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(256, 128, dtype=torch.float64))
    ill = (u * torch.logspace(0, -3, 128, dtype=torch.float64)) @ v.T
    return {"random 128x512": torch.randn(128, 512), "random square 256": torch.randn(256, 256),
            "condition number 1e3, 128x256": ill.float()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"Newton-Schulz in {args.dtype}; ||O - UV^T||/||UV^T|| and max|sigma - 1|")
    print(f"{'matrix':32s} {'steps':>5s} {'jordan':>9s} {'polar_ex':>9s} {'jordan':>9s}"
          f" {'polar_ex':>9s}")
    for name, m in matrices().items():
        u, _, vh = torch.linalg.svd(m.double(), full_matrices=False)
        target = u @ vh
        for steps in (5, 6, 8, 10):
            dist, dev = [], []
            for coefs in ("jordan", "polar_express"):
                o = newton_schulz(m, steps, coefs, dtype=dtype).double()
                dist.append(float((o - target).norm() / target.norm()))
                dev.append(float((torch.linalg.svdvals(o) - 1).abs().max()))
            print(f"{name:32s} {steps:5d} {dist[0]:9.2e} {dist[1]:9.2e} {dev[0]:9.2e}"
                  f" {dev[1]:9.2e}")


if __name__ == "__main__":
    main()
