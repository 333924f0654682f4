"""Weight averaging (EMA, tail-EMA, SWA, LAWA) against torch.optim.swa_utils and formulas;
BatchNorm statistics against update_bn; what the engine evaluates (raw, averaged, the
Schedule-Free x) and an exact resume with both; the bench, sweep and report selecting them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from wdlab import averaging, train
from wdlab.config import build_config
from wdlab.errors import ConfigError
from wdlab.evaluation import Evaluator, bn_steps, recompute_bn
from wdlab.optim import ScheduleFreeAdamW
from wdlab.store import Store
from wdlab.workloads.digits import Digits


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _wiggle(model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen), alpha=0.1)


# ---- the spec ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("off", "off"), ("EMA:0.999", "ema:0.999"), ("tail_ema:0.99@0.5", "tail_ema:0.99@0.5"),
     ("ema:0.9@0.25/4", "tail_ema:0.9@0.25/4"), ("tail_ema:0.9@0", "ema:0.9"),
     ("swa:0.25", "swa:0.25"), ("swa:1/5", "swa:1/5"), ("lawa:5/50", "lawa:5/50")],
)
def test_spec_syntax_is_canonical(text: str, canonical: str) -> None:
    assert averaging.canonical(text) == canonical
    assert averaging.canonical(canonical) == canonical


@pytest.mark.parametrize(
    ("text", "why"),
    [("bogus", "unknown average"), ("ema:1.0", "BETA must be in"), ("ema:x", "BETA must be a"),
     ("tail_ema:0.9", "needs @START"), ("ema:0.9@1", "START must be in"),
     ("swa:0", "WINDOW must be in"), ("swa:0.5@0.1", "takes no @START"),
     ("lawa:3", "needs /EVERY"), ("lawa:0/5", "K must be an integer"),
     ("ema:0.9/0", "EVERY must be an integer")],
)
def test_bad_specs_name_the_field_in_one_line(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config("teacher", tiny=True, assignments=[f"train.average={text}"])
    assert err.value.field == "train.average"
    assert why in str(err.value) and "\n" not in str(err.value)
    assert "ema:BETA" in str(err.value)  # the syntax comes with the error


def test_options_that_need_an_average_say_so() -> None:
    for item in ("train.target_weights=average", "train.eval_raw=false"):
        with pytest.raises(ConfigError, match="needs a weight average") as err:
            build_config("teacher", tiny=True, assignments=[item])
        assert err.value.field == "train." + item.split("=")[0].split(".")[1]


# ---- the averages against torch and formulas ---------------------------------------------


@pytest.mark.parametrize("text", ["ema:0.9", "tail_ema:0.8@0.5/2", "swa:0.4/3", "swa:1"])
def test_ema_and_swa_match_torch_averaged_model(text: str) -> None:
    spec = averaging.parse(text)
    assert spec is not None
    model, steps = _model(), 40
    ours = averaging.WeightAverage(spec, model, steps)
    fn = get_ema_multi_avg_fn(spec.decay) if spec.kind == "ema" else None
    theirs = AveragedModel(model, multi_avg_fn=fn)
    gen = torch.Generator().manual_seed(1)
    taken = 0
    for step in range(1, steps + 1):
        _wiggle(model, gen)
        if ours.update(step):
            theirs.update_parameters(model)
            taken += 1
    assert taken == ours.count == int(theirs.n_averaged) > 1
    for a, b in zip(ours.values(), theirs.module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_tail_ema_starts_at_its_fraction_and_swa_window_is_the_last_part() -> None:
    tail = averaging.parse("tail_ema:0.9@0.5/2")
    swa = averaging.parse("swa:0.25")
    assert tail is not None and swa is not None
    assert [s for s in range(1, 21) if tail.due(s, 20)] == [12, 14, 16, 18, 20]
    assert [s for s in range(1, 21) if swa.due(s, 20)] == [16, 17, 18, 19, 20]


def test_lawa_is_the_mean_of_the_last_k_snapshots() -> None:
    spec = averaging.parse("lawa:3/4")
    assert spec is not None
    model = _model()
    ours = averaging.WeightAverage(spec, model, 100)
    gen = torch.Generator().manual_seed(2)
    snapshots = []
    for step in range(1, 23):
        _wiggle(model, gen)
        if step % 4 == 0:
            snapshots.append([p.detach().clone() for p in model.parameters()])
        ours.update(step)
    assert ours.count == 5 and len(ours.ring) == 3
    want = [torch.stack([s[i] for s in snapshots[-3:]]).mean(0) for i in range(6)]
    for a, b in zip(ours.values(), want, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("text", ["ema:0.9", "lawa:2/3"])
def test_state_dict_resumes_the_average(text: str) -> None:
    spec = averaging.parse(text)
    assert spec is not None
    model = _model()
    a = averaging.WeightAverage(spec, model, 30)
    gen = torch.Generator().manual_seed(3)
    for step in range(1, 11):
        _wiggle(model, gen)
        a.update(step)
    b = averaging.WeightAverage(spec, model, 30)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for step in range(11, 21):
        _wiggle(model, gen)
        a.update(step)
        b.update(step)
    for x, y in zip(a.values(), b.values(), strict=True):
        assert torch.equal(x, y)
    other = averaging.WeightAverage(averaging.parse("ema:0.5"), model, 30)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="holds the average"):
        other.load_state_dict(a.state_dict())


# ---- BatchNorm and what is evaluated -------------------------------------------------------


class _Toy:
    """A workload stand-in: batch(step) a pure function of step; evaluate records what it saw."""

    metric = "val_loss"
    higher_is_better = False

    def __init__(self) -> None:
        self.seen: list[dict[str, torch.Tensor]] = []

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(100 + step)
        return torch.randn(16, 5, generator=gen) * 2 + 1, torch.randint(0, 3, (16,), generator=gen)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        self.seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"val_loss": float(self.loss(model, self.batch(-1)))}


def test_recompute_bn_is_update_bn_on_the_same_batches() -> None:
    toy, ours = _Toy(), _model()
    theirs = copy.deepcopy(ours)
    steps = bn_steps(30, 4)
    assert steps == [26, 27, 28, 29] and bn_steps(2, 4) == [0, 1, 2, 3]
    recompute_bn(ours, toy, steps)
    update_bn([toy.batch(s) for s in steps], theirs)
    for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_schedule_free_is_evaluated_at_x_with_its_own_bn_statistics() -> None:
    toy, model = _Toy(), _model()
    opt = ScheduleFreeAdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    for step in range(6):
        opt.zero_grad()
        toy.loss(model, toy.batch(step)).backward()
        opt.step()
    before = copy.deepcopy(model.state_dict())
    x_model = copy.deepcopy(model)
    x_opt = ScheduleFreeAdamW(x_model.parameters(), lr=0.05, weight_decay=0.1)
    x_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    x_opt.eval()
    update_bn([toy.batch(s) for s in bn_steps(6, 3)], x_model)
    metrics = Evaluator(toy, model, opt, None, bn_batches=3)(6)
    assert set(metrics) == {"val_loss"}
    for key, value in x_model.state_dict().items():
        assert torch.equal(toy.seen[-1][key], value), key
    assert opt.training  # swapped back: the training state is what it was
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=1e-6)
        if "running" in key or "num_batches" in key:
            assert torch.equal(value, before[key]), key  # BN buffers put back exactly


def test_average_is_evaluated_beside_or_instead_of_the_raw_weights() -> None:
    toy, model = _Toy(), _model()
    avg = averaging.WeightAverage(averaging.parse("ema:0.5"), model, 10)  # type: ignore[arg-type]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    both = Evaluator(toy, model, opt, avg, target_weights="average", bn_batches=2)
    first = both(0)  # before the first update: the average is the raw weights
    assert first["avg_val_loss"] == first["val_loss"] and both.metric == "avg_val_loss"
    gen = torch.Generator().manual_seed(5)
    for step in range(1, 4):
        _wiggle(model, gen)
        avg.update(step)
    live = copy.deepcopy(model.state_dict())
    metrics = both(3)
    assert metrics["avg_val_loss"] != metrics["val_loss"]
    shadow = toy.seen[-1]
    want = copy.deepcopy(model)
    with torch.no_grad():
        for p, value in zip(want.parameters(), avg.values(), strict=True):
            p.copy_(value)
    update_bn([toy.batch(s) for s in bn_steps(3, 2)], want)
    for key, value in want.state_dict().items():
        assert torch.equal(shadow[key], value), key
    for key, value in model.state_dict().items():
        assert torch.equal(value, live[key]), key  # the live model is untouched
    instead = Evaluator(toy, model, opt, avg, raw=False, target_weights="average")
    assert set(instead(3)) == {"avg_val_loss"}
    assert Evaluator(toy, model, opt, avg, target_weights="raw").metric == "val_loss"


# ---- the engine --------------------------------------------------------------------------


def _digits(*assignments: str, **flags: Any):
    return build_config(
        "digits", tiny=True, flags=flags,
        assignments=["train.monitor=off", "train.stop_at_target=false", "train.eval_every=5",
                     "train.checkpoint_every=10", "train.bn_batches=3", *assignments],
    )


def _checkpoint(root: Path, run_id: str) -> dict[str, Any]:
    return torch.load(root / run_id / "last.pt", weights_only=True)


def test_resume_with_average_and_schedule_free_equals_uninterrupted(tmp_path, monkeypatch) -> None:
    """Schedule-Free (swapped to x at every evaluation, BN recomputed there) with a tail-EMA
    running across the checkpoint at step 10: the resumed run equals the uninterrupted one
    in weights, average, optimizer state and every logged metric."""
    config = _digits("train.average=tail_ema:0.8@0.3", "schedule.kind=constant", steps=24,
                     **{"optimizer.name": "sf_adamw"})
    root = tmp_path / "runs"
    with Store(tmp_path / "s.db") as store:
        full = train.run(config, store, root)
        assert full.metric == "avg_val_accuracy"
        real_batch = Digits.batch

        def crash_at_17(self, step):
            if step == 17:
                raise RuntimeError("simulated crash")
            return real_batch(self, step)

        monkeypatch.setattr(Digits, "batch", crash_at_17)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train.run(config, store, root)
        crashed = [r for r in store.list_runs() if r.id != full.run_id][0]
        assert _checkpoint(root, crashed.id)["step"] == 10
        monkeypatch.setattr(Digits, "batch", real_batch)
        run_id, resumed_config = train.resume_config(store, crashed.id)
        resumed = train.run(resumed_config, store, root, resume_id=run_id)
        want_rows, got_rows = store.metrics(full.run_id), store.metrics(resumed.run_id)
    assert resumed.final_metrics == full.final_metrics
    for key in ("avg_val_accuracy", "avg_val_loss", "val_accuracy", "val_loss"):
        assert got_rows[key] == want_rows[key], key
    want, got = _checkpoint(root, full.run_id), _checkpoint(root, resumed.run_id)
    for part in ("model", "average"):
        flat_want = torch.nn.utils.parameters_to_vector(
            list(want[part].values()) if part == "model" else _tensors(want[part]))
        flat_got = torch.nn.utils.parameters_to_vector(
            list(got[part].values()) if part == "model" else _tensors(got[part]))
        assert torch.equal(flat_want, flat_got), part
    for a, b in zip(want["optimizer"]["param_groups"], got["optimizer"]["param_groups"],
                    strict=True):
        assert {k for k in a if a[k] != b.get(k)} == set()  # (torch adds "differentiable")


def _tensors(state: dict[str, Any]) -> list[torch.Tensor]:
    found = state.get("params") or [t for snap in state["ring"] for t in snap]
    return [t.float() for t in found]


def test_checkpoint_without_the_average_is_refused(tmp_path) -> None:
    from wdlab import checkpoint as checkpoint_io
    from wdlab.errors import CheckpointError

    model = _model()
    avg = averaging.WeightAverage(averaging.parse("ema:0.9"), model, 10)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="has no weight average"):
        checkpoint_io.restore_average(tmp_path / "last.pt", {}, "r1", avg)
    with pytest.raises(CheckpointError, match="do not fit this model"):
        checkpoint_io.restore_average(tmp_path / "last.pt", {"average": {
            "spec": "ema:0.9", "count": 1, "params": [torch.zeros(1)]}}, "r1", avg)
    bad = [torch.full_like(p, float("nan")) for p in model.parameters()]
    with pytest.raises(CheckpointError, match="holds a non-finite weight average"):
        checkpoint_io.restore_average(tmp_path / "last.pt", {"average": {
            "spec": "ema:0.9", "count": 1, "params": bad}}, "r1", avg)
    assert all(torch.isfinite(a).all() for a in avg.values())  # nothing was loaded
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert checkpoint_io.first_nonfinite(model, opt, avg) is None
    avg.values()[0].fill_(float("inf"))  # a checkpoint is not written with it
    assert checkpoint_io.first_nonfinite(model, opt, avg) == "the weight average ema:0.9"


def test_the_average_of_each_parameter_keeps_its_layout_and_the_swap_is_exact() -> None:
    """One tensor per parameter, shaped and typed like it (under FSDP2 a shard like it:
    tests/test_parallel.py); inside swapped_in() the live parameters hold the average, after
    it exactly their own values, also when the block raises."""
    model = _model()
    avg = averaging.WeightAverage(averaging.parse("ema:0.5"), model, 10)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(7)
    for step in range(1, 4):
        _wiggle(model, gen)
        avg.update(step)
    live = [p.detach().clone() for p in model.parameters()]
    assert [(a.shape, a.dtype) for a in avg.values()] == [(p.shape, p.dtype) for p in live]
    assert not any(torch.equal(a, w) for a, w in zip(avg.values(), live, strict=True))
    with pytest.raises(RuntimeError, match="inside"), avg.swapped_in():
        for p, a in zip(model.parameters(), avg.values(), strict=True):
            assert torch.equal(p, a)
        raise RuntimeError("inside")
    for p, want in zip(model.parameters(), live, strict=True):
        assert torch.equal(p, want) and p.requires_grad


# ---- bench, sweep and report -----------------------------------------------------------


def test_bench_compares_each_optimizer_with_each_average() -> None:
    from wdlab.bench import _spec, methods

    assert methods(["adamw", "sf_adamw"], ["off", "EMA:0.99"]) == [
        ("adamw", "adamw", "off"), ("adamw + ema:0.99", "adamw", "ema:0.99"),
        ("sf_adamw", "sf_adamw", "off"), ("sf_adamw + ema:0.99", "sf_adamw", "ema:0.99")]
    with pytest.raises(ConfigError, match="^--average: unknown average") as err:
        methods(["adamw"], ["nope"])
    assert err.value.field == "average"
    spec = _spec("sf_adamw", "teacher", 2, 0, True, "ema:0.99")
    assert spec.assignments == ["schedule.kind=constant", "train.average=ema:0.99"]
    assert "sf_adamw-ema:0.99" in (spec.name or "")


def test_sweep_axis_over_averages_validates_every_trial() -> None:
    from wdlab.sweep import SweepSpec
    from wdlab.sweep.spec import parse_axis, validated_trials

    assert parse_axis("off,ema:0.9@0.5,lawa:3/10") == ["off", "ema:0.9@0.5", "lawa:3/10"]
    assert parse_axis('"ema:0.99"') == ["ema:0.99"]  # one spec alone: quoted (a:b is a range)
    spec = SweepSpec.create(workload="teacher", axes={"train.average": parse_axis("off,swa:0.5")},
                            tiny=True)
    assert len(validated_trials(spec)[3]) == 2
    bad = SweepSpec.create(workload="teacher", axes={"train.average": ["off", "ema:7"]},
                           tiny=True)
    with pytest.raises(ConfigError, match="train.average: .*BETA must be in"):
        validated_trials(bad)


def test_report_labels_the_method(tmp_path) -> None:
    assert averaging.label("adamw", "off") == "adamw"
    assert averaging.label("sf_sgd", None) == "sf_sgd"
    assert averaging.label("adamw", "swa:0.25") == "adamw + swa:0.25"
    from wdlab.html_report import build_report
    from wdlab.sweep import SweepSpec, run_sweep

    spec = SweepSpec.create(
        workload="teacher", axes={"train.average": ["off", "ema:0.9"]}, tiny=True,
        assignments=["steps=12", "train.eval_every=6", "train.monitor=off"], name="avg",
    )
    summary = run_sweep(spec, tmp_path / "s.db", workers=1, progress=False)
    with Store(tmp_path / "s.db") as store:
        text = build_report(store, summary.sweep_id, tmp_path / "r.html").read_text()
        results = [store.get_run(t.run_id).result for t in summary.trials]
    assert [r["metric"] for r in results] == ["val_mse", "avg_val_mse"]
    assert "adamw + ema:0.9" in text  # the method's label (curves, comparisons)
    assert "avg_val_mse / val_mse" in text  # the metric each run's target is read on
