"""Does a native kernel lose speed right after a torch op? (docs/performance.md, Threads.)

torch's OpenMP workers spin for a while after each parallel region; a kernel on threads of
another pool then competes with them for the cores. This times SGDW's one-pass kernel on
19 x (1024, 1024) fp32 tensors right after `x.mul_` on 200 MB and after a 50 ms pause,
interleaved, each against the same probe's bandwidth (20 bytes moved per parameter).

    python benchmarks/kernel_after_torch_op.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wdlab.optim import _native as native


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    if not native.available():
        raise SystemExit(f"native kernels unavailable: {native.why_unavailable()}")
    torch.manual_seed(0)
    params, grads, bufs = ([torch.randn(1024, 1024) for _ in range(19)] for _ in range(3))
    probe = torch.randn(50 * 1024 * 1024)

    def step() -> None:
        native.run_multi("sgdw", [params, grads, bufs], 0.1, 0.9, 0.0, False, 0.99, 0.0, False)

    step()
    after_op, after_pause, probe_times = [], [], []
    for _ in range(args.rounds):
        probe.mul_(1.0)
        start = time.perf_counter()
        step()
        after_op.append(time.perf_counter() - start)
        time.sleep(0.05)
        start = time.perf_counter()
        step()
        after_pause.append(time.perf_counter() - start)
        time.sleep(0.05)
        start = time.perf_counter()
        probe.mul_(1.0)
        probe_times.append(time.perf_counter() - start)
    bandwidth = 2 * probe.numel() * 4 / statistics.median(probe_times)
    moved = 20 * sum(p.numel() for p in params)
    print(f"{torch.get_num_threads()} threads; probe {bandwidth / 1e9:.1f} GB/s (median)")
    for label, times in (("after a torch op", after_op), ("after a 50 ms pause", after_pause)):
        med = statistics.median(times)
        print(f"{label:20s} {med * 1e3:7.2f} ms  {100 * moved / med / bandwidth:5.1f}% of bw")


if __name__ == "__main__":
    main()
