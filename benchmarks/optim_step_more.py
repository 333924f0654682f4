"""Step time of NovoGrad, FAdam and SCALE (AdamW as reference) against memory bandwidth.

Not part of pytest. Same setup and helpers as benchmarks/optim_step.py: 20M params
(19 x Linear(1024, 1024) + LayerNorm, fp32), fixed randn gradients, steps interleaved round
robin with the in-place bandwidth probe (x.mul_ on 200 MB), median over --steps rounds.

    python benchmarks/optim_step_more.py [--steps 30] [--warmup 5] [--threads 2]

Bytes per parameter each update must move with its pass structure (fp32, read + write):
  AdamW: read p, g, m, v; write p, m, v                                        = 28 B
  NovoGrad: read g for ||g|| (4), then read p, g, m; write p, m (20)            = 24 B
  FAdam: read g for RMS(g) (4); f pass: read g, f, p, write f (16); update pass:
         read p, g, f, m, write p, m (24); the RMS clips need whole-tensor sums = 44 B
  SCALE: hidden matrices: read g for row norms (4), read p, g, write p (12)     = 16 B;
         output layer: momentum lerp (12) + norms (4) + update (12)            = 28 B;
         vectors: AdamW's 28 B. Weighted by element count below.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

import wdlab.optim

sys.path.insert(0, str(Path(__file__).resolve().parent))
from optim_step import MB, Entry, cpu_name, make_params, timed  # noqa: E402


def scale_groups(params: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
    """Roles as wdlab.param_groups gives them: the last Linear is the output layer."""
    weights = [p for p in params if p.ndim == 2]
    vectors = [p for p in params if p.ndim < 2]
    return [
        {"params": weights[:-1], "role": "matrix"},
        {"params": weights[-1:], "role": "output"},
        {"params": vectors, "role": "vector"},
    ]


def scale_bytes(params: list[torch.nn.Parameter]) -> float:
    weights = [p.numel() for p in params if p.ndim == 2]
    vectors = sum(p.numel() for p in params if p.ndim < 2)
    total = sum(weights[:-1]) * 16 + weights[-1] * 28 + vectors * 28
    return total / (sum(weights) + vectors)


def entries() -> list[Entry]:
    get = wdlab.optim.get
    probe = make_params(False)
    rows = [
        Entry("wdlab AdamW", lambda p: get("adamw")(p, lr=1e-3, weight_decay=0.01), 28),
        Entry("wdlab NovoGrad", lambda p: get("novograd")(p, lr=1e-2, weight_decay=0.01), 24),
        Entry("wdlab FAdam", lambda p: get("fadam")(p, lr=1e-3, weight_decay=0.1), 44),
        Entry(
            "wdlab SCALE",
            lambda p: get("scale")(scale_groups(p), lr=1e-3, weight_decay=0.01),
            scale_bytes(probe),  # type: ignore[arg-type]
        ),
        Entry(
            "wdlab NovoGrad chunked",
            lambda p: get("novograd")(p, lr=1e-2, weight_decay=0.01, mode="chunked"),
            24,
        ),
        Entry(
            "wdlab FAdam chunked",
            lambda p: get("fadam")(p, lr=1e-3, weight_decay=0.1, mode="chunked"),
            44,
        ),
        Entry(
            "wdlab SCALE chunked",
            lambda p: get("scale")(scale_groups(p), lr=1e-3, weight_decay=0.01, mode="chunked"),
            scale_bytes(probe),  # type: ignore[arg-type]
        ),
    ]
    if importlib.util.find_spec("pytorch_optimizer"):
        import pytorch_optimizer as po

        rows.append(
            Entry(
                "pytorch_optimizer NovoGrad",
                lambda p: po.NovoGrad(p, lr=1e-2, weight_decay=0.01),
                24,
            )
        )
        rows.append(
            Entry("pytorch_optimizer FAdam", lambda p: po.FAdam(p, lr=1e-3, weight_decay=0.1), 44)
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed rounds (median over them)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = entries()
    for e in rows:
        e.params = make_params(False)
        e.opt = e.make(e.params)
    numel = sum(p.numel() for p in rows[0].params)
    probe = torch.ones(200 * MB // 4)
    probe_times: list[float] = []
    for rnd in range(args.warmup + args.steps):
        probe_times.append(timed(lambda: probe.mul_(1.0000001)))
        for e in rows:
            assert e.opt is not None
            t = timed(e.opt.step)
            if rnd >= args.warmup:
                e.times.append(t)
        if rnd < args.warmup:
            probe_times.clear()

    bw = 2 * probe.numel() * 4 / statistics.median(probe_times) / 1e9
    bw_best = 2 * probe.numel() * 4 / min(probe_times) / 1e9
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}")
    print(f"{numel / 1e6:.1f}M params fp32; median of {args.steps} interleaved steps")
    print(f"in-place bandwidth (x.mul_ on 200 MB, read+write): {bw:.1f} GB/s median,")
    print(f"  {bw_best:.1f} GB/s best; 'min' columns: fastest step, against the best bandwidth")
    header = (
        f"{'optimizer':28s} {'ms/step':>8s} {'B/param':>8s} {'GB/s':>6s} {'% of bw':>7s}"
        f" {'min ms':>8s} {'min %bw':>7s}"
    )
    print(header)
    print("-" * len(header))
    for e in rows:
        nbytes = (e.bytes_per_param or 0) * numel / 1e9
        med, best = statistics.median(e.times), min(e.times)
        pct, best_pct = 100 * nbytes / med / bw, 100 * nbytes / best / bw_best
        print(
            f"{e.label:28s} {med * 1e3:8.2f} {e.bytes_per_param or 0:8.1f} {nbytes / med:6.1f} "
            f"{pct:6.0f}% {best * 1e3:8.2f} {best_pct:6.0f}%"
        )


if __name__ == "__main__":
    main()
