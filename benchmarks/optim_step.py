"""Optimizer step time: wdlab's optimizers beside their peers, and against memory bandwidth.

Not part of pytest. A 20M-parameter model (19 x Linear(1024, 1024) + LayerNorm, fp32),
fixed randn gradients; every optimizer gets its own copy. Steps of all optimizers are
interleaved (round robin) with an in-place bandwidth probe (x.mul_ on 200 MB: read + write),
so machine load hits all of them alike; each row reports the median over --steps rounds,
and the fastest step (on a shared machine the minimum shows what the code can do unloaded).

    python benchmarks/optim_step.py [--steps 30] [--warmup 5] [--only adamw,lion] [--compiled]

Bytes per parameter that an update must move (fp32, read + write), the bandwidth bound:
  AdamW: read p, g, m, v; write p, m, v                         = 28 B
  SGD momentum / SGDW: read p, g, buf; write p, buf             = 20 B
  Lion: read p, g, m; write p, m                                = 20 B
  AdamP: Adam's 28 B + one more read of p and g for the cosine test = 36 B
  SGDP: SGD's 20 B + one more read of p and g                    = 28 B
  Schedule-Free AdamW: read y, g, z, v; write y, z, v             = 28 B
  Schedule-Free SGD: read y, g, z; write y, z                     = 20 B
Muon is compute-bound (Newton-Schulz matmuls): no GB/s column; it runs on 4 square matrices
(--muon-size, default 1024), with the family's variants (Polar Express, NorMuon, per-head).
The toolbox rows (docs/optimizers.md):
  AdamW decay="corrected": the same kernel, only the decay rate differs  = 28 B
  AdamW decay_to="init": one more pass w.lerp_(t, c): read p, t; write p = 40 B
  AdamW decay_to="ema": and the EMA t.lerp_(w, 1 - β): read t, p; write t = 52 B
  AdamW decay_to="one": one more pass w·(1 − c) + c: read p; write p     = 36 B
  CautiousUpdate(Lion): a wrapper of several passes (snapshot, mask, rescale): no bound, its
  cost is read against pytorch_optimizer's cautious Lion and the bare Lion.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import wdlab.optim
from wdlab.optim._dispatch import matmul_dtype

MB = 1 << 20


@dataclass
class Entry:
    """One optimizer under test; `times` collects one step time per round."""

    label: str
    make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
    bytes_per_param: int | None
    matrices_only: bool = False
    params: list[torch.nn.Parameter] = field(default_factory=list)
    opt: torch.optim.Optimizer | None = None
    times: list[float] = field(default_factory=list)


MUON_SIZE = [1024]  # --muon-size: the side of Muon's 4 square matrices


def make_params(matrices_only: bool, seed: int = 0) -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    if matrices_only:
        side = MUON_SIZE[0]
        params = [torch.nn.Linear(side, side).weight for _ in range(4)]
        for p in params:
            p.grad = torch.randn_like(p)
        return params
    layers: list[torch.nn.Module] = [torch.nn.Linear(1024, 1024) for _ in range(19)]
    layers.append(torch.nn.LayerNorm(1024))
    params = [p for m in layers for p in m.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def rows(compiled: bool) -> list[tuple[str, list[Entry]]]:
    """(family, [wdlab entry, peer entries...]) in display order; missing peers are skipped."""
    get = wdlab.optim.get
    families: list[tuple[str, list[Entry]]] = []
    families.append(
        (
            "adamw",
            [
                Entry("wdlab AdamW", lambda p: get("adamw")(p, lr=1e-3, weight_decay=0.01), 28),
                Entry(
                    "torch AdamW fused",
                    lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01, fused=True),
                    28,
                ),
            ],
        )
    )
    sgd_kw = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)
    sgdw = [
        Entry("wdlab SGDW", lambda p: get("sgdw")(p, **sgd_kw), 20),
        Entry("wdlab SGDW chunked", lambda p: get("sgdw")(p, **sgd_kw, mode="chunked"), 20),
    ]
    if compiled:
        sgdw.append(
            Entry("wdlab SGDW compiled", lambda p: get("sgdw")(p, **sgd_kw, mode="compiled"), 20)
        )
    sgdw += [
        Entry("torch SGD for-loop", lambda p: torch.optim.SGD(p, **sgd_kw, foreach=False), 20),
        Entry("torch SGD foreach", lambda p: torch.optim.SGD(p, **sgd_kw, foreach=True), 20),
        Entry("torch SGD fused", lambda p: torch.optim.SGD(p, **sgd_kw, fused=True), 20),
    ]
    families.append(("sgdw", sgdw))
    lion = [
        Entry("wdlab Lion", lambda p: get("lion")(p, lr=1e-4, weight_decay=0.1), 20),
        Entry(
            "wdlab Lion chunked",
            lambda p: get("lion")(p, lr=1e-4, weight_decay=0.1, mode="chunked"),
            20,
        ),
    ]
    if compiled:
        lion.append(
            Entry(
                "wdlab Lion compiled",
                lambda p: get("lion")(p, lr=1e-4, weight_decay=0.1, mode="compiled"),
                20,
            )
        )
    if importlib.util.find_spec("pytorch_optimizer"):
        import pytorch_optimizer as po

        lion.append(
            Entry("pytorch_optimizer Lion", lambda p: po.Lion(p, lr=1e-4, weight_decay=0.1), 20)
        )
    if importlib.util.find_spec("lion_pytorch"):
        import lion_pytorch

        lion.append(
            Entry(
                "lion-pytorch Lion", lambda p: lion_pytorch.Lion(p, lr=1e-4, weight_decay=0.1), 20
            )
        )
    families.append(("lion", lion))
    families += toolbox_rows()
    for name, peer, nbytes, kw in (
        ("adamp", "AdamP", 36, dict(lr=1e-3, weight_decay=0.01)),
        ("sgdp", "SGDP", 28, dict(lr=0.01, momentum=0.9, weight_decay=1e-4)),
    ):
        entries = []
        try:
            cls = get(name)
            entries.append(Entry(f"wdlab {peer}", lambda p, cls=cls, kw=kw: cls(p, **kw), nbytes))
        except ImportError as exc:  # another engineer's module may not exist yet
            print(f"note: skipping wdlab {peer}: {exc}")
        if importlib.util.find_spec("pytorch_optimizer"):
            import pytorch_optimizer as po

            pcls = getattr(po, peer)
            entries.append(
                Entry(
                    f"pytorch_optimizer {peer}", lambda p, pcls=pcls, kw=kw: pcls(p, **kw), nbytes
                )
            )
        families.append((name, entries))
    families += schedule_free_rows()
    muon = []
    try:
        mcls = get("muon")
        muon.append(Entry("wdlab Muon", lambda p: mcls(p, lr=0.02, weight_decay=0.1), None, True))
        # the Muon family (same Newton-Schulz work except where noted)
        muon.append(Entry("wdlab Muon polar_express", lambda p: mcls(
            p, lr=0.02, weight_decay=0.1, ns_coefficients="polar_express"), None, True))
        muon.append(Entry("wdlab NorMuon", lambda p: get("normuon")(
            p, lr=0.02, weight_decay=0.1), None, True))
        muon.append(Entry("wdlab Muon 8 heads (rows:8)", lambda p: mcls(
            [{"params": p, "muon_split": "rows:8"}], lr=0.02, weight_decay=0.1), None, True))
    except ImportError as exc:
        print(f"note: skipping wdlab Muon: {exc}")
    if hasattr(torch.optim, "Muon"):
        muon.append(
            Entry(
                "torch Muon", lambda p: torch.optim.Muon(p, lr=0.02, weight_decay=0.1), None, True
            )
        )
    families.append(("muon", muon))
    return families


def _train_mode(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    opt.train()  # type: ignore[attr-defined]  # schedulefree refuses step() in eval mode
    return opt


def schedule_free_rows() -> list[tuple[str, list[Entry]]]:
    """Schedule-Free AdamW (y, g, z, v read, y, z, v written: 28 B) and SGD (20 B), beside the
    schedulefree package's foreach and for-loop paths."""
    get = wdlab.optim.get
    out = []
    for family, short, peer, nbytes, kw in (
        ("sf_adamw", "AdamW", "AdamWScheduleFree", 28, dict(lr=2.5e-3, weight_decay=0.01)),
        ("sf_sgd", "SGD", "SGDScheduleFree", 20, dict(lr=0.1, weight_decay=1e-4)),
    ):
        cls = get(family)
        entries = [
            Entry(f"wdlab SF-{short}", lambda p, cls=cls, kw=kw: cls(p, **kw), nbytes),
            Entry(f"wdlab SF-{short} reference",
                  lambda p, cls=cls, kw=kw: cls(p, **kw, impl="reference"), nbytes),
            Entry(f"wdlab SF-{short} foreach",
                  lambda p, cls=cls, kw=kw: cls(p, **kw, impl="foreach"), nbytes),
        ]
        if importlib.util.find_spec("schedulefree"):
            import schedulefree

            pcls = getattr(schedulefree, peer)
            for foreach in (True, False):
                entries.append(Entry(
                    f"schedulefree {short} {'foreach' if foreach else 'for-loop'}",
                    lambda p, pcls=pcls, kw=kw, f=foreach: _train_mode(pcls(p, **kw, foreach=f)),
                    nbytes,
                ))
        out.append((family, entries))
    return out


def toolbox_rows() -> list[tuple[str, list[Entry]]]:
    """Corrected decay, decay toward a target and cautious masking (wdlab's toolbox)."""
    from wdlab.optim.wrappers import CautiousUpdate

    get = wdlab.optim.get
    have_po = importlib.util.find_spec("pytorch_optimizer") is not None
    kw = dict(lr=1e-3, weight_decay=0.01)
    corrected = [
        Entry("wdlab AdamW corrected", lambda p: get("adamw")(p, **kw, decay="corrected"), 28),
        Entry("torch AdamW fused", lambda p: torch.optim.AdamW(p, **kw, fused=True), 28),
    ]
    targets = [
        Entry("wdlab AdamW decay_to=init", lambda p: get("adamw")(p, **kw, decay_to="init"), 40),
        Entry("wdlab AdamW decay_to=ema", lambda p: get("adamw")(p, **kw, decay_to="ema"), 52),
        Entry("wdlab AdamW decay_to=one", lambda p: get("adamw")(p, **kw, decay_to="one"), 36),
        Entry("torch AdamW fused", lambda p: torch.optim.AdamW(p, **kw, fused=True), 28),
    ]
    lion_kw = dict(lr=1e-4, weight_decay=0.1)
    cautious = [
        Entry("wdlab CautiousUpdate(Lion)", lambda p: CautiousUpdate(get("lion")(p, **lion_kw)),
              None),
        Entry("wdlab Lion (bare)", lambda p: get("lion")(p, **lion_kw), 20),
    ]
    if have_po:
        import pytorch_optimizer as po

        corrected.append(Entry("pytorch_optimizer AdamC", lambda p: po.AdamC(p, **kw), 28))
        cautious.append(Entry("pytorch_optimizer Lion cautious",
                              lambda p: po.Lion(p, **lion_kw, cautious=True), None))
    return [("corrected", corrected), ("decay_to", targets), ("cautious", cautious)]


def cpu_name() -> str:
    """The model name lscpu shows, from /proc/cpuinfo (Linux), else platform's guess."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed rounds (median over them)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument(
        "--only",
        default="",
        help="comma list of families: adamw,sgdw,lion,corrected,decay_to,cautious,adamp,sgdp,"
        "sf_adamw,sf_sgd,muon",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--compiled", action="store_true", help="add torch.compile rows (slow start)"
    )
    parser.add_argument(
        "--muon-steps", type=int, default=5, help="timed rounds for Muon (compute-bound)"
    )
    parser.add_argument(
        "--muon-size", type=int, default=1024,
        help="side of Muon's 4 square matrices (smaller: torch Muon's bfloat16 Newton-Schulz is "
        "emulated, ~50x slower, on CPUs without AVX512-BF16/AMX)",
    )
    args = parser.parse_args()
    MUON_SIZE[0] = args.muon_size
    torch.set_num_threads(args.threads)

    only = {s.strip() for s in args.only.split(",") if s.strip()}
    families = [(f, es) for f, es in rows(args.compiled) if not only or f in only]
    entries = [e for _, es in families for e in es]
    for e in entries:
        e.params = make_params(e.matrices_only)
        e.opt = e.make(e.params)
    numel = sum(p.numel() for p in make_params(False))
    probe = torch.ones(200 * MB // 4)
    probe_times: list[float] = []

    for rnd in range(args.warmup + args.steps):
        probe_times.append(timed(lambda: probe.mul_(1.0000001)))
        for e in entries:
            if e.matrices_only and rnd >= 1 + args.muon_steps:
                continue
            assert e.opt is not None
            t = timed(e.opt.step)
            if rnd >= (1 if e.matrices_only else args.warmup):
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
        f"{'optimizer':28s} {'ms/step':>8s} {'vs peer':>8s} {'GB/s':>6s} {'% of bw':>7s}"
        f" {'min ms':>8s} {'min vs':>7s} {'min %bw':>7s}"
    )
    print(header)
    print("-" * len(header))
    for _, es in families:
        if not es:
            continue
        meds = {e.label: statistics.median(e.times) for e in es if e.times}
        mins = {e.label: min(e.times) for e in es if e.times}
        peers = [e for e in es if not e.label.startswith("wdlab")]
        best_peer = min(peers, key=lambda e: meds[e.label]) if peers else None
        best_min_peer = min(peers, key=lambda e: mins[e.label]) if peers else None
        for e in es:
            ms, min_ms = meds[e.label] * 1e3, mins[e.label] * 1e3
            ratio = min_ratio = gbs = pct = min_pct = ""
            if best_peer is not None and best_min_peer is not None and e.label.startswith("wdlab"):
                ratio = f"{meds[best_peer.label] / meds[e.label]:.2f}x"
                min_ratio = f"{mins[best_min_peer.label] / mins[e.label]:.2f}x"
            if e.bytes_per_param:
                rate = e.bytes_per_param * numel / meds[e.label] / 1e9
                gbs, pct = f"{rate:.1f}", f"{100 * rate / bw:.0f}%"
                min_rate = e.bytes_per_param * numel / mins[e.label] / 1e9
                min_pct = f"{100 * min_rate / bw_best:.0f}%"
            print(
                f"{e.label:28s} {ms:8.2f} {ratio:>8s} {gbs:>6s} {pct:>7s}"
                f" {min_ms:8.2f} {min_ratio:>7s} {min_pct:>7s}"
            )
        if best_peer is not None:
            print(f"{'':28s} (vs peer = speed relative to {best_peer.label})")
    print(
        f"Muon rows: 4 matrices of {MUON_SIZE[0]}x{MUON_SIZE[0]} only, compute-bound; "
        "Newton-Schulz dtype: wdlab's ns_dtype='auto' "
        f"({matmul_dtype(torch.device('cpu'))} here), torch's bfloat16."
        if any(f == "muon" for f, _ in families)
        else ""
    )


if __name__ == "__main__":
    main()
