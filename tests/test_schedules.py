"""wdlab.schedules against formulas written out here and against torch's own schedulers."""

from __future__ import annotations

import io
import math

import pytest
import torch

from wdlab.schedules import GroupKeyScheduler, LRSchedule, Schedule

T = 40


def _opt(lr: float = 0.5, wd: float = 0.1, cls: type = torch.optim.SGD) -> torch.optim.Optimizer:
    return cls([torch.nn.Parameter(torch.ones(3))], lr=lr, weight_decay=wd)


def _shape(name: str, x: float, p: float = 2.0) -> float:
    return {"linear": 1 - x, "cosine": (1 + math.cos(math.pi * x)) / 2,
            "sqrt": 1 - x**0.5, "power": (1 - x) ** p}[name]


@pytest.mark.parametrize("kind", ["linear", "cosine", "power"])
def test_decays_after_warmup_follow_their_formula(kind: str) -> None:
    s = Schedule(kind, T, warmup=5, final=0.1, power=3.0)
    for t in range(T + 3):
        if t < 5:
            want = (t + 1) / 5
        else:
            x = min((t - 5) / (T - 5), 1.0)
            want = 0.1 + 0.9 * _shape(kind, x, 3.0)
        assert s(t) == pytest.approx(want, rel=1e-12, abs=1e-15), t


@pytest.mark.parametrize("shape", ["linear", "cosine", "sqrt", "power"])
def test_wsd_is_stable_then_cools_down_over_the_last_fraction(shape: str) -> None:
    s = Schedule("wsd", 100, warmup=10, cooldown=0.25, shape=shape, final=0.0)
    for t in range(105):
        if t < 10:
            want = (t + 1) / 10
        elif t < 75:
            want = 1.0
        else:
            want = _shape(shape, min((t - 75) / 25, 1.0))
        assert s(t) == pytest.approx(want, abs=1e-12), t
    assert s(100) == 0.0 and s(74) == 1.0 and s(76) < 1.0


def test_linear_to_zero_and_constant() -> None:
    assert Schedule("linear", T)(T) == 0.0
    assert Schedule("linear", T)(T // 2) == pytest.approx(0.5)
    assert all(Schedule("constant", T)(t) == 1.0 for t in range(T))


def _lrs(sched: torch.optim.lr_scheduler.LRScheduler, opt: torch.optim.Optimizer) -> list[float]:
    out = []
    for _ in range(T + 5):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (dict(kind="cosine", final=0.2),
         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=T, eta_min=0.1)),
        (dict(kind="linear", final=0.2),
         lambda o: torch.optim.lr_scheduler.LinearLR(o, 1.0, 0.2, total_iters=T)),
        (dict(kind="power", power=1.5),
         lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=T, power=1.5)),
    ],
)
def test_lr_schedule_coincides_with_torchs_scheduler(ours: dict, theirs) -> None:
    opt_a, opt_b = _opt(), _opt()
    a = _lrs(LRSchedule(opt_a, Schedule(total=T, **ours)), opt_a)
    b = _lrs(theirs(opt_b), opt_b)
    assert a[:T + 1] == pytest.approx(b[:T + 1], rel=1e-9, abs=1e-12)


def test_engine_multiplier_is_the_scheduler_multiplier() -> None:
    from wdlab import train

    opt = _opt(lr=2.0)
    lrs = _lrs(LRSchedule(opt, Schedule("cosine", T, warmup=4, final=0.1)), opt)
    assert lrs == [2.0 * train.lr_multiplier(t, T, "cosine", 4, 0.1) for t in range(T + 5)]


def _resume(make, k: int = 7, steps: int = 20) -> tuple[list[float], list[float]]:
    opt, sched = make()
    full = []
    for _ in range(steps):
        full.append(sched.get_last_value()[0] if hasattr(sched, "get_last_value")
                    else sched.get_last_lr()[0])
        opt.step()
        sched.step()
    opt, sched = make()
    for _ in range(k):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"o": opt.state_dict(), "s": sched.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    opt, sched = make()
    opt.load_state_dict(saved["o"])
    sched.load_state_dict(saved["s"])
    rest = []
    for _ in range(k, steps):
        rest.append(sched.get_last_value()[0] if hasattr(sched, "get_last_value")
                    else sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return full[k:], rest


def test_lr_schedule_checkpoints_plain_values_and_resumes_exactly() -> None:
    def make():
        opt = _opt()
        return opt, LRSchedule(opt, Schedule("wsd", 20, warmup=3, shape="sqrt", cooldown=0.5))

    full, rest = _resume(make)
    assert full == rest


def test_weight_decay_scheduler_on_torch_adamw_follows_its_own_schedule() -> None:
    opt = _opt(lr=1e-3, wd=0.4, cls=torch.optim.AdamW)
    lr_sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    wd = GroupKeyScheduler(opt, "weight_decay", Schedule("cosine", T))
    seen = []
    for _ in range(T + 1):
        seen.append(opt.param_groups[0]["weight_decay"])
        opt.step()
        lr_sched.step()
        wd.step()
    assert seen == pytest.approx([0.4 * (1 + math.cos(math.pi * t / T)) / 2 for t in range(T + 1)])
    assert opt.param_groups[0]["lr"] == 1e-3  # the lr is untouched
    assert opt.param_groups[0]["initial_weight_decay"] == 0.4


def test_weight_decay_scheduler_resumes_exactly() -> None:
    def make():
        opt = _opt(wd=0.3)
        return opt, GroupKeyScheduler(opt, "weight_decay", Schedule("linear", 20, final=0.1))

    full, rest = _resume(make)
    assert full == rest and full[0] > full[-1] > 0.03


def test_group_key_scheduler_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="no numeric 'momentum_x'"):
        GroupKeyScheduler(_opt(), "momentum_x", Schedule("cosine", T))
    with pytest.raises(ValueError, match="fn must be"):
        GroupKeyScheduler(_opt(), "weight_decay", None)
    with pytest.raises(ValueError, match="initial_weight_decay"):
        GroupKeyScheduler(_opt(), "weight_decay", Schedule("cosine", T), last_epoch=3)


@pytest.mark.parametrize(
    ("kw", "field"),
    [({"kind": "step"}, "kind"), ({"kind": "wsd", "shape": "exp"}, "shape"),
     ({"kind": "wsd", "cooldown": 0.0}, "cooldown"), ({"kind": "linear", "final": 2.0}, "final"),
     ({"kind": "linear", "total": 0}, "total")],
)
def test_bad_schedule_names_the_field(kw: dict, field: str) -> None:
    kw.setdefault("total", T)
    with pytest.raises(ValueError, match=field):
        Schedule(**kw)
