"""ATen ops and host syncs per optimizer.step() on the generic (device) path, against torch.

Not part of pytest (tests/test_optim_dispatch.py asserts the budget). On a GPU each ATen op
launches at least one kernel and each host sync stalls the CPU until the device catches up,
so these counts bound how fast a step can be there; a TorchDispatchMode counts them on any
machine (wdlab.optim.opcount). Model: 50 tensors, as a small transformer block stack has them:
20 x (256, 256) and 4 x (1024, 256) matrices, a (256, 1024) output head, 25 vectors (256,);
fixed randn gradients; the second step is counted (the first creates state).

    python benchmarks/device_step.py [--device cpu|cuda] [--impl foreach] [--time 20]

Columns: ops = every ATen op of one step; host reads = reads of the optimizer's own CPU
scalars (the "step" counters, a tensor lr; torch's foreach AdamW reads each counter twice),
which never wait for a device; syncs = reads of any other tensor's value on the host, or
copies between the CPU and the device (each one waits). `--time N` adds the median wall time
of N steps (synchronized after each). The toolbox rows: decay_to targets (one multi-tensor
pass more than decay toward zero; "ema" two) and CautiousUpdate (on the foreach path a fixed
number of multi-tensor ops over the inner optimizer's, whatever the number of tensors).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from wdlab.optim import (
    SCALE,
    SGDP,
    SGDW,
    AdamP,
    AdamW,
    FAdam,
    Lion,
    Muon,
    NovoGrad,
    ScheduleFreeAdamW,
    ScheduleFreeSGD,
)
from wdlab.optim.opcount import count_step
from wdlab.optim.wrappers import CautiousUpdate

D = 256
SHAPES = [(D, D)] * 20 + [(4 * D, D)] * 4 + [(D, 4 * D)] + [(D,)] * 25
ROLES = ["matrix"] * 24 + ["output"] + ["vector"] * 25


def make_params(device: str, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in SHAPES]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(device)
    return params


def by_role(params: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
    """One group per role, as wdlab.param_groups makes them (Muon and SCALE read the role)."""
    groups: dict[str, list[torch.nn.Parameter]] = {}
    for p, role in zip(params, ROLES, strict=True):
        groups.setdefault(role, []).append(p)
    return [{"params": ps, "role": role} for role, ps in groups.items()]


Make = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


def rows(impl: str) -> list[tuple[str, Make]]:
    return [
        ("torch SGD foreach", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=True)),
        ("torch AdamW foreach", lambda p: torch.optim.AdamW(p, foreach=True)),
        ("wdlab AdamW", lambda p: AdamW(p, impl=impl)),
        ("wdlab SGDW", lambda p: SGDW(p, lr=0.1, momentum=0.9, weight_decay=0.1, impl=impl)),
        ("wdlab Lion", lambda p: Lion(p, weight_decay=0.1, impl=impl)),
        ("wdlab Muon", lambda p: Muon(by_role(p), impl=impl)),
        ("wdlab AdamP", lambda p: AdamP(p, weight_decay=0.1, impl=impl)),
        ("wdlab SGDP", lambda p: SGDP(p, lr=0.1, momentum=0.9, weight_decay=0.1, impl=impl)),
        ("wdlab NovoGrad", lambda p: NovoGrad(p, weight_decay=0.1, impl=impl)),
        ("wdlab FAdam", lambda p: FAdam(p, impl=impl)),
        ("wdlab SCALE", lambda p: SCALE(by_role(p), weight_decay=0.1, impl=impl)),
        ("wdlab ScheduleFreeAdamW", lambda p: ScheduleFreeAdamW(p, weight_decay=0.1, impl=impl)),
        ("wdlab ScheduleFreeSGD", lambda p: ScheduleFreeSGD(p, weight_decay=0.1, impl=impl)),
        # the toolbox (docs/optimizers.md): decay targets and cautious masking
        *[(f"wdlab AdamW decay_to={t}", _target(AdamW, t, impl)) for t in ("init", "ema", "one")],
        ("wdlab SGDW decay_to=ema", lambda p: SGDW(p, lr=0.1, momentum=0.9, weight_decay=0.1,
                                                    decay_to="ema", impl=impl)),
        ("wdlab Lion decay_to=init", _target(Lion, "init", impl)),
        ("CautiousUpdate(wdlab AdamW)",
         lambda p: CautiousUpdate(AdamW(p, weight_decay=0.1, impl=impl))),
        ("CautiousUpdate(wdlab Lion)",
         lambda p: CautiousUpdate(Lion(p, weight_decay=0.1, impl=impl))),
        ("CautiousUpdate(wdlab AdamW decay_to=ema)",
         lambda p: CautiousUpdate(AdamW(p, weight_decay=0.1, decay_to="ema", impl=impl))),
    ]


def _target(cls: type, target: str, impl: str) -> Make:
    return lambda p: cls(p, weight_decay=0.1, decay_to=target, impl=impl)


def median_ms(opt: torch.optim.Optimizer, device: str, n: int) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for _ in range(n):
        sync()
        start = time.perf_counter()
        opt.step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--impl", default="foreach", help="wdlab impl to count (default foreach)")
    parser.add_argument("--time", type=int, default=0, help="also time N steps (median)")
    args = parser.parse_args()
    header = "| optimizer | ops | host reads | syncs |" + (" ms/step |" if args.time else "")
    print(f"device {args.device}, wdlab impl={args.impl!r}, torch {torch.__version__}, "
          f"{len(SHAPES)} tensors, {sum(torch.Size(s).numel() for s in SHAPES):,} parameters")
    print(header)
    print("|---|---:|---:|---:|" + ("---:|" if args.time else ""))
    for label, make in rows(args.impl):
        opt = make(make_params(args.device))
        opt.step()  # create the state
        count = count_step(opt)
        line = f"| {label} | {count.total} | {count.host_reads} | {len(count.syncs)} |"
        if args.time:
            line += f" {median_ms(opt, args.device, args.time):.2f} |"
        print(line)


if __name__ == "__main__":
    main()
