"""Count the ATen ops and host syncs of one optimizer.step(), with a TorchDispatchMode.

Why: on a GPU every ATen op is (at least) one kernel launch and every read of a tensor's value
on the host waits for the device to finish, so these two counts decide how fast a step can be
there, and they can be measured on any machine (benchmarks/device_step.py,
tests/test_optim_dispatch.py).

What counts as a host sync: an op that hands a tensor's value to Python or copies it to the
CPU (`_local_scalar_dense` behind .item()/float()/bool(), `is_nonzero`, `equal`, `nonzero`,
`tolist`-style copies), and any copy between the CPU and another device. Exempt, and counted
apart as `host_reads`: reads of the optimizer's own CPU scalars, the "step" counters and a
tensor lr, which live on the CPU precisely so that reading them never waits for a device
(torch's capturable=False layout; torch's foreach AdamW reads each step counter twice).
Profiler markers (record_function) are not ops.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from wdlab._compat import dispatch_mode_class

TorchDispatchMode = dispatch_mode_class()

aten = torch.ops.aten
VALUE_READS = {
    aten._local_scalar_dense.default,
    aten.is_nonzero.default,
    aten.equal.default,
    aten.nonzero.default,
    aten.allclose.default,
}
"""Ops whose result needs the tensor's value on the host."""
COPIES = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default}


@dataclass
class StepCount:
    """What one step did: ATen ops (by name), host syncs (by op and device), exempt reads."""

    ops: Counter[str] = field(default_factory=Counter)
    syncs: list[str] = field(default_factory=list)
    host_reads: int = 0

    @property
    def total(self) -> int:
        """All ATen ops, exempt host reads included (they are dispatched ops too)."""
        return sum(self.ops.values())

    @property
    def compute(self) -> int:
        """ATen ops other than the exempt host reads."""
        return self.total - self.host_reads


def host_scalars(optimizer: torch.optim.Optimizer) -> set[int]:
    """ids of the CPU tensors a step may read without a sync: "step" counters, tensor lrs."""
    inner = getattr(optimizer, "optimizer", optimizer)  # wdlab's wrappers
    out: set[int] = set()
    for state in inner.state.values():
        step = state.get("step")
        if isinstance(step, torch.Tensor) and step.device.type == "cpu" and step.numel() == 1:
            out.add(id(step))
    for group in inner.param_groups:
        for key in ("lr", "initial_lr"):
            value = group.get(key)
            if isinstance(value, torch.Tensor) and value.device.type == "cpu":
                out.add(id(value))
    return out


class _Counter(TorchDispatchMode):
    def __init__(self, exempt: set[int]) -> None:
        super().__init__()
        self.exempt = exempt
        self.count = StepCount()

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        name = str(func)
        if not name.startswith("profiler."):
            self.count.ops[name] += 1
            first = args[0] if args else None
            if func in VALUE_READS:
                if id(first) in self.exempt:
                    self.count.host_reads += 1
                else:
                    device = first.device if isinstance(first, torch.Tensor) else "?"
                    self.count.syncs.append(f"{name} on {device}")
            elif func in COPIES:
                self._check_copy(func, args, kwargs)
        return func(*args, **kwargs)

    def _check_copy(self, func: Any, args: tuple, kwargs: dict) -> None:
        src = args[1] if func is aten.copy_.default else args[0]
        if func is aten.copy_.default:
            dst_device = args[0].device
        elif func is aten._copy_from.default:
            dst_device = args[1].device
        else:
            dst_device = kwargs.get("device") or src.device
        if isinstance(src, torch.Tensor) and torch.device(dst_device).type != src.device.type:
            self.count.syncs.append(f"{func} {src.device} -> {dst_device}")


def count_step(
    optimizer: torch.optim.Optimizer, step: Callable[[], Any] | None = None
) -> StepCount:
    """Run `step()` (default: optimizer.step()) once and count its ops and host syncs."""
    counter = _Counter(host_scalars(optimizer))
    with counter:
        (step or optimizer.step)()
    return counter.count
