"""Every wdlab optimizer and wrapper under DDP and FSDP2 (2 gloo ranks on the CPU) against one
process on the same global batch; a torch.distributed.checkpoint save/load and continue; the
Monitor's values and its single writer. One spawned 2-rank job (tests/distributed_worker.py)
measures everything; the tests here assert on what it measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as worker  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)

REL = 1e-5  # fp32, relative: the bar for "the same parameters as one process"
MONITOR_REL = 1e-4
"""Monitor values derive from update deltas (w_after - w_before), which carry the fp32
rounding of the weights amplified by |w|/|delta|; measured ~1.4e-5."""


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("dist") / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(Path(worker.__file__)), str(out)],
        capture_output=True, text=True, timeout=900, env=env,
    )
    results = json.loads(out.read_text()) if out.exists() else {}
    errors = {k: v["error"] for k, v in results.items() if "error" in v}
    assert proc.returncode == 0 and not errors, (
        f"the 2-rank job failed (rc {proc.returncode}): {errors or proc.stderr[-4000:]}"
    )
    return results


@pytest.mark.parametrize("case", list(worker.CASES))
@pytest.mark.parametrize("mode", worker.MODES)
def test_same_parameters_as_one_process(measured: dict[str, Any], case: str, mode: str) -> None:
    r = measured[case]
    assert r["moved"] > 1e-3, "the weights barely moved: the comparison would be vacuous"
    assert r[mode] < REL, f"{case} under {mode}: {r[mode]:.2e} relative from one process"


@pytest.mark.parametrize("case", list(worker.CASES))
@pytest.mark.parametrize("mode", worker.MODES)
def test_checkpoint_load_and_continue(measured: dict[str, Any], case: str, mode: str) -> None:
    r = measured[case]
    assert r[f"{mode}_state_keys_equal"], "DCP lost or added state entries"
    assert r[f"{mode}_state_max_abs"] == 0.0, "state after DCP load differs from the saved one"
    assert r[f"{mode}_resumed"] < REL
    # Under FSDP2 the optimizer state is sharded (DTensor), under DDP it is plain replicas.
    assert r[f"{mode}_state_sharded"] == (mode == "fsdp")


def test_adamp_decisions_need_the_whole_tensor(measured: dict[str, Any]) -> None:
    """The net has a weight whose rank-0 shard alone would pass AdamP's channel test while the
    whole tensor fails it, and one that passes the layer test: so the AdamP/SGDP runs above
    would differ from one process if the decision were taken per shard."""
    assert measured["views"] == {
        "hidden": "layer", "wn": None, "wn_rank0_rows": "channel", "mid": None,
    }


@pytest.mark.parametrize("mode", worker.MODES)
def test_monitor_reports_one_process_values(measured: dict[str, Any], mode: str) -> None:
    r = measured["monitor"]
    assert r[f"{mode}_keys_equal"] and not r[f"{mode}_missing"]
    assert r[f"{mode}_count"] > 100  # every per-tensor probe, summaries and logit stats
    assert r[f"{mode}_max_rel"] < MONITOR_REL, r[f"{mode}_worst"]
    measured_steps = worker.STEPS // 2  # every=2
    assert r[f"{mode}_sink_calls"] == [measured_steps, 0], "only rank 0 may write to the sink"


@pytest.mark.parametrize("case", ["muon", "normuon-pe-split"])
def test_muon_orthogonalizes_each_matrix_once_on_its_owner(measured: dict[str, Any],
                                                           case: str) -> None:
    """3 Muon matrices (hidden 7x6, wn 6x7, mid 9x6), STEPS steps plus the resumed STEPS -
    SAVE_AT: under FSDP2 and under DDP with work_split="replicated" each runs Newton-Schulz
    once per step, on its owner. Owners are planned over the whole step (both param groups),
    largest first onto the rank with the least work so far: mid (cost 324) -> 0, hidden
    (252) -> 1, wn (252) -> 1, so rank 0 runs 1 per step and rank 1 runs 2."""
    steps = 2 * worker.STEPS - worker.SAVE_AT
    for mode in worker.MODES:
        assert measured[case][f"{mode}_ns_calls"] == [steps, 2 * steps], mode
    # The communication: FSDP2 sends each matrix's row shards to its owner and the result's
    # rows back (one gather + one scatter per matrix and step, no broadcast); DDP replicas
    # need only the owner's broadcast of the result.
    matrices = 3 * steps
    assert measured[case]["fsdp_collectives"] == {"gather": matrices, "scatter": matrices,
                                                  "broadcast": 0}
    assert measured[case]["ddp_collectives"] == {"gather": 0, "scatter": 0,
                                                 "broadcast": matrices}


def test_muon_owner_assignment_balances_cost() -> None:
    from wdlab.optim.distributed import ns_cost, owners

    costs = [ns_cost(s) for s in [(64, 64), (64, 64), (128, 64), (8, 8), (8, 8)]]
    assert owners(costs, 2) == [1, 1, 0, 0, 1]  # 128x64 alone on 0 against the two 64x64
    assert owners(costs, 1) == [0] * 5


def test_qk_clip_rescales_alike_on_every_rank(measured: dict[str, Any]) -> None:
    r = measured["qkclip"]
    assert r["clipped"] > 0, "no head was clipped: the comparison would be vacuous"
    for mode in worker.MODES:
        assert r[mode] < REL, f"QK-Clip under {mode}: {r[mode]:.2e} relative from one process"
        assert r[f"{mode}_clipped"] == r["clipped"]


def test_batched_expert_weights_and_an_empty_shard(measured: dict[str, Any]) -> None:
    """NorMuon + Polar Express on a [3, 5, 4] expert tensor (split "batch") and a 1-row
    matrix whose rank-1 shard is empty: parameters and state as in one process."""
    r = measured["experts"]
    assert r["v_shape"] == [3, 5]  # one second moment per expert and row
    for mode in worker.MODES:
        assert r[mode] < REL and r[f"{mode}_state"] < REL, (mode, r)


def test_native_kernels_refuse_dtensors(measured: dict[str, Any]) -> None:
    r = measured["kernels"]
    if not r["available"]:
        pytest.skip("no native kernels on this machine")
    assert r["supports"] is False
    assert "needs plain contiguous CPU" in r["message"] and "DTensor" in r["message"]


def test_native_kernels_refuse_what_they_cannot_read() -> None:
    """The C kernels take only plain contiguous CPU float tensors; asked directly with anything
    else they raise one clear error instead of reading a wrong pointer."""
    from wdlab.optim import _native as native

    if not native.available():
        pytest.skip(native.why_unavailable() or "no native kernels")
    x = torch.ones(4, 4)
    assert native.supports([x]) and not native.supports([x.t()])
    assert not native.supports([x], [torch.ones(4, 4, dtype=torch.float64)])
    with pytest.raises(TypeError, match="plain contiguous CPU"):
        native.run_multi("lion", [[x.t()], [x], [x]], 0.1, 0.9, 0.99, 1.0, 0.0)
    with pytest.raises(TypeError, match="one dtype"):
        native.run_multi("lion", [[x], [x.double()], [x]], 0.1, 0.9, 0.99, 1.0, 0.0)
