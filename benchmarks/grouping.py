"""Seconds and peak memory of wdlab.classify on HF GPT-2 small (124M, random init).

Each measurement runs in a fresh process: build the model (transformers' GPT2 config at its
default sizes, no download), reset the kernel's peak-RSS counter, time classify(model), read
the peak RSS. "extra" is the peak above the RSS just before classify; the model's own
parameters are 475 MiB in float32. A tiny GPT-2 is classified first to warm up imports.
`--src DIR` measures the wdlab found under DIR (e.g. a checkout of main at b98efe8 for the
old probe) instead of the one installed.

    python benchmarks/grouping.py                    # installed wdlab: 1st call, cached call
    python benchmarks/grouping.py --src OLD/src      # another wdlab, for before/after
    python benchmarks/grouping.py --warm-blas        # BLAS buffers made before measuring

It also measures the floor any one-forward probe pays: in another fresh process, one
train-mode forward of the input classify infers (token ids (1, 8); (2, 8) before session 6)
with the parameters frozen and one backward to a zero scalar added to the embedding output
(what classify's screen must do at least).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, resource, time, torch
torch.manual_seed(0)
from transformers import GPT2Config, GPT2LMHeadModel
import wdlab
from wdlab.groups import classify

def rss_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
# Warm up once on a tiny GPT-2 so that one-time costs (lazy imports, first autograd use)
# are not counted as the probe's: the old probe's warm-up is the same call.
classify(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=64)))
model = GPT2LMHeadModel(GPT2Config())
WARM_BLAS
params_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
runs = []
for _ in range(REPEAT):
    before = rss_mb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    except OSError:
        pass
    t = time.perf_counter()
    infos = classify(model)
    seconds = time.perf_counter() - t
    runs.append({"seconds": seconds, "extra_mb": rss_mb("VmHWM") - before})
invariant = sum(i.scale_invariant for i in infos)
print(json.dumps({"wdlab": wdlab.__file__, "params_mb": params_mb, "runs": runs,
                  "n_params": len(infos), "n_invariant": invariant}))
"""


FLOOR = r"""
import json, torch
torch.manual_seed(0)
from transformers import GPT2Config, GPT2LMHeadModel
from wdlab.groups import classify

def rss_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
classify(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=64)))
model = GPT2LMHeadModel(GPT2Config()).requires_grad_(False)
WARM_BLAS
try:  # the input classify infers (one sequence of 8 tokens since session 6; (2, 8) before)
    from wdlab._probe import infer_input
    torch.manual_seed(0)
    x = infer_input(model)[0]
except ImportError:
    x = torch.randint(0, model.config.vocab_size, (2, 8))
before = rss_mb("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
z = torch.zeros((), requires_grad=True)
model.transformer.wte.register_forward_hook(lambda m, a, out: out + z)
logits = model(x).logits
torch.autograd.grad((logits * torch.rand_like(logits)).sum(), [z])
print(json.dumps({"extra_mb": rss_mb("VmHWM") - before}))
"""


# MKL keeps GEMM packing buffers per BLAS thread (~7 MB each here), made at a process's first
# large matmul and kept: `--warm-blas` makes them before the measurement, to tell them apart.
WARM_BLAS = """
_a, _w = torch.randn(16, 768), torch.randn(50257, 768)
_ = (_a @ _w.T) @ _w
del _a, _w, _
"""


def measure(
    src: str | None, repeat: int, threads: int, child: str = CHILD, warm_blas: bool = False
) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if src:
        env["PYTHONPATH"] = src
    code = f"import torch; torch.set_num_threads({threads})\n" + child.replace(
        "REPEAT", str(repeat)
    ).replace("WARM_BLAS", WARM_BLAS if warm_blas else "")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", help="directory holding the wdlab package to measure")
    ap.add_argument("--repeat", type=int, default=2, help="classify calls per process")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warm-blas", action="store_true",
                    help="one GPT-2-sized matmul before measuring (MKL's per-thread buffers)")
    args = ap.parse_args()
    t = time.perf_counter()
    res = measure(args.src, args.repeat, args.threads, warm_blas=args.warm_blas)
    print(f"wdlab: {res['wdlab']}")
    print(f"GPT-2 124M: {res['n_params']} tensors, {res['params_mb']:.0f} MB of parameters, "
          f"{res['n_invariant']} scale-invariant")
    for i, run in enumerate(res["runs"]):
        share = 100 * run["extra_mb"] / res["params_mb"]
        print(f"classify call {i + 1}: {run['seconds']:.3f} s, peak RSS +{run['extra_mb']:.0f} MB"
              f" ({share:.1f}% of the parameters)")
    floor = measure(args.src, 1, args.threads, FLOOR, args.warm_blas)["extra_mb"]
    print(f"floor (one frozen train-mode forward + backward, classify's input): peak RSS "
          f"+{floor:.0f} MB ({100 * floor / res['params_mb']:.1f}% of the parameters)")
    print(f"(whole measurement {time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
