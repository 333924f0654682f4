"""How well sweeps scale: 2 local workers vs 1, Ray vs the local pool, a 2-node Ray cluster.

    python benchmarks/sweep_scaling.py                    # teacher and charlm, 3 rounds
    python benchmarks/sweep_scaling.py --quick            # small sweeps, 1 round: it works
    python benchmarks/sweep_scaling.py --workloads teacher --kinds "local x1,local x2"
    python benchmarks/sweep_scaling.py --rounds 0 --ray-idle-seconds 20   # idle Ray CPU only

Sweeps (fixed recipe, no stop at the target, log-spaced lr in each optimizer's safe range, 2
seeds): teacher 32 trials x 3000 steps, charlm 8 x 200 (--trials/--steps override both;
a charlm step costs far more than a teacher step).
Kinds: "local x1" and "local x2" (the persistent local pool), "ray x2" (a local Ray of 2
CPUs, as `wdlab sweep --backend ray` starts it), "cluster x2" (a 2-node Ray cluster on this
machine, ray.cluster_utils.Cluster, one CPU per node: the workers reach the store through
the driver only, as on real machines). Targets on a 2-core machine: 2 workers >= 1.9x the
trials per hour of 1; Ray's wall time <= 1.05x the local pool's; the 2-node cluster's <=
1.10x.

Why rounds: a shared VM's speed drifts by tens of percent within minutes, so one x1 sweep
followed by one x2 sweep puts that drift into the ratio. Each round runs every kind once
per workload, in an order rotated from round to round (every kind takes every position),
the ratios are taken within a round, and the verdict is the median over rounds.

Wall time is the whole run_sweep call. Each Ray kind has its own driver process that stays
connected through all rounds (a process holds one Ray connection), so, like the local
pool's persistent workers, only its first sweep pays the workers' start-up (spawn, torch
and wdlab imports, the first optimizer's lazy torch._dynamo import): an untimed 2-trial
warm-up sweep of every kind and workload pays it before round 1 (--no-warmup: round 1
pays it); --cold makes every local sweep pay it, as a fresh `wdlab sweep` command does.
Under every sweep's row, "CPU s" is the CPU seconds of each role's processes over that sweep
(Linux /proc, sampled every 2 s): the driver (which also trains with one local worker),
the local pool, Ray's task workers, the Mailbox actor and Ray's own processes (raylet,
GCS, agents, log monitor: idle they take ~6-7% of one core, all of it from the workers).
Clusters start before the rounds and are timed apart; their idle processes run beside every
sweep. "busy" is the trials' own training seconds over (workers x wall): what is left to
100% is each trial's evaluation, set-up and saving, and the sweep's own costs (start-up,
the last trial running alone, dispatching, and for Ray the messages to the driver).
Every sweep writes to a fresh store.

Measure each comparison in its own run (the commands in docs/lab.md): an idle Ray takes
~6-7% of one core, which a 1-worker sweep takes from the idle core but a 2-worker sweep
from its workers, so with Ray kinds in the same run the local x2/x1 ratio comes out low.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from wdlab.store import Store
from wdlab.sweep import SweepSpec, run_sweep, shutdown_workers
from wdlab.sweep.reaper import process_tree

KINDS = ("local x1", "local x2", "ray x2", "cluster x2")
# workload: (trials, steps, lr range) for the full and the --quick measurement
WORKLOADS = {
    "teacher": ((32, 3000), (8, 300), (3e-4, 1e-2)),
    "charlm": ((8, 200), (4, 20), (1e-3, 1e-2)),
}
TARGETS = {"scaling": 1.9, "ray x2": 1.05, "cluster x2": 1.10}


def _spec(workload: str, steps: int, trials: int, threads: int | None) -> SweepSpec:
    lo, hi = WORKLOADS[workload][2]
    n = max(trials // 2, 1)  # x 2 seeds
    lrs = [float(f"{lo * (hi / lo) ** (i / max(n - 1, 1)):.6g}") for i in range(n)]
    fixed = [f"steps={steps}", "train.stop_at_target=false", 'train.monitor="off"']
    if threads is not None:
        fixed.append(f"train.threads={threads}")
    return SweepSpec.create(
        workload=workload,
        axes={"optimizer.lr": lrs},
        seeds=2 if trials > 1 else 1,
        assignments=fixed,
    )


def measure(
    spec: SweepSpec, store_path: Path, workers: int, backend: str, address: str | None
) -> dict[str, float]:
    """One sweep, timed; raises if a trial did not end well."""
    start = time.perf_counter()
    summary = run_sweep(
        spec, store_path, workers=workers, backend=backend, address=address, progress=False
    )
    wall = time.perf_counter() - start
    ended = summary.counts["finished"] + summary.counts["diverged"]
    if ended != len(summary.trials):
        errors = {t.error for t in summary.trials if t.error}
        raise SystemExit(f"not every trial ended well: {summary.counts} {errors}")
    with Store(store_path) as store:
        runs = [store.get_run(t.run_id) for t in summary.trials if t.run_id]
    busy = sum((r.result or {}).get("train_seconds", 0.0) for r in runs)
    return {
        "wall": wall,
        "trials": len(summary.trials),
        "per_hour": len(summary.trials) / wall * 3600,
        "trial_seconds": busy / len(summary.trials),
        "busy": busy / (workers * wall),
        "workers": workers,
    }


# --------------------------------------------------------------------------- Ray drivers


def _serve_ray(conn: Any, address: str | None) -> None:
    """A Ray driver process: connect once, then run the sweeps it is sent."""
    import ray

    from wdlab.sweep.executors import local_ray_options

    start = time.perf_counter()
    if address is None:
        ray.init(**local_ray_options(2))  # as `wdlab sweep --backend ray` starts it
    else:
        ray.init(address=address, log_to_driver=False)
    conn.send(time.perf_counter() - start)
    try:
        while True:
            request = conn.recv()
            if request is None:
                return
            spec_json, store_path = request
            spec = SweepSpec.model_validate_json(spec_json)
            try:
                conn.send(measure(spec, Path(store_path), 2, "ray", address))
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                conn.send({"error": f"{type(err).__name__}: {err}"})
    finally:
        ray.shutdown()


class RayDriver:
    """A process holding one Ray connection for all rounds (see the module docstring)."""

    def __init__(self, address: str | None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve_ray, args=(child, address), daemon=True)
        self.process.start()
        child.close()  # so that a child that dies ends recv() with EOFError
        try:
            self.connect_seconds = self.conn.recv()
        except EOFError:
            where = f"the cluster at {address}" if address else "a local Ray"
            raise SystemExit(
                f"the Ray driver process could not start or reach {where} (its traceback is "
                "above; under heavy load Ray's 30 s raylet start-up limit can run out)"
            ) from None

    def sweep(self, spec: SweepSpec, store_path: Path) -> dict[str, float]:
        self.conn.send((spec.model_dump_json(), str(store_path)))
        row = self.conn.recv()
        if "error" in row:
            raise SystemExit(row["error"])
        return row

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(30)


# --------------------------------------------------------------------------- measuring


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _role(pid: int, drivers: set[int]) -> str:
    """Which part of a sweep a process of this benchmark's tree is ("" if unknown yet)."""
    if pid == os.getpid() or pid in drivers:
        return "driver"
    command = _cmdline(pid)
    if not command:
        return ""  # a zombie: its role was read while it lived
    if "ray::Mailbox" in command:
        return "mailbox"
    if "ray::" in command:
        return "ray workers"  # Ray's task workers (ray::ray_worker, idle ones: ray::IDLE)
    if "multiprocessing.spawn" in command:
        return "pool"  # the persistent local workers
    return "ray"  # raylet, gcs_server, Ray's agents and monitors, wdlab's reaper


ROLES = ("driver", "pool", "ray workers", "mailbox", "ray")


class CpuMeter:
    """CPU seconds per role over one sweep, for this process and all its descendants (the
    local pool, the Ray driver processes, all that Ray started). A thread looks every
    `every` seconds and books each process's CPU since its last look to the role it has
    now (a pooled Ray worker turns from ray::IDLE into the Mailbox and back), so processes
    that end during the sweep (its Mailbox actor) count up to their last look."""

    def __init__(self, drivers: set[int], every: float = 2.0) -> None:
        self.drivers, self.every = drivers, every
        self.roles: dict[int, str] = {}
        self.seen: dict[int, float] = {}
        self.used = dict.fromkeys(ROLES, 0.0)
        self.done = threading.Event()
        self._look(book=False)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _look(self, book: bool = True) -> None:
        for pid in [os.getpid(), *process_tree(os.getpid())]:
            seconds = _cpu_seconds(pid)
            if seconds is None:
                continue
            role = _role(pid, self.drivers) or self.roles.get(pid) or "ray"
            self.roles[pid] = role
            if book:
                self.used[role] += seconds - self.seen.get(pid, 0.0)
            self.seen[pid] = seconds

    def _run(self) -> None:
        while not self.done.wait(self.every):
            self._look()

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.thread.join()
        self._look()
        return dict(self.used)


def _idle_ray_cpu(seconds: float, drivers: set[int]) -> float:
    """Share of one core the idle Ray clusters' own processes use (Linux /proc)."""
    meter = CpuMeter(drivers)
    time.sleep(seconds)
    used = meter.stop()
    return (used["ray"] + used["mailbox"] + used["ray workers"]) / seconds


def _print_row(workload: str, label: str, row: dict[str, float]) -> None:
    print(
        f"  {workload:<8} {label:<10} {row['trials']:3.0f} trials  {row['wall']:8.2f} s  "
        f"{row['per_hour']:7.0f} trials/h  trial {row['trial_seconds']:.2f} s  "
        f"busy {100 * row['busy']:3.0f}%",
        flush=True,
    )
    if "cpu" in row:
        cpu = row["cpu"]
        print(f"  {'':<8} {'':<10} CPU s: " + ", ".join(f"{k} {cpu[k]:.2f}" for k in ROLES),
              flush=True)


def _medians(rounds: list[dict[str, dict[str, dict[str, float]]]], kinds: list[str]) -> dict:
    out: dict[str, Any] = {}
    for workload in rounds[0]:
        rows = [r[workload] for r in rounds]
        result: dict[str, Any] = {}
        if "local x1" in kinds and "local x2" in kinds:
            ratios = [r["local x1"]["wall"] / r["local x2"]["wall"] for r in rows]
            result["scaling"] = ratios
            print(
                f"{workload}: 2 workers vs 1, trials per hour, per round "
                f"{', '.join(f'{x:.2f}x' for x in ratios)}; median "
                f"{statistics.median(ratios):.2f}x (target >= {TARGETS['scaling']}x)"
            )
        for kind in ("ray x2", "cluster x2"):
            if kind in kinds and "local x2" in kinds:
                ratios = [r[kind]["wall"] / r["local x2"]["wall"] for r in rows]
                result[kind] = ratios
                print(
                    f"{workload}: {kind} vs local x2, wall time, per round "
                    f"{', '.join(f'{x:.2f}x' for x in ratios)}; median "
                    f"{statistics.median(ratios):.2f}x (target <= {TARGETS[kind]}x)"
                )
        out[workload] = result
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sweeps and 1 round: checks that everything runs")
    parser.add_argument("--workloads", default="teacher,charlm", help="comma list")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of {KINDS}")
    parser.add_argument("--steps", type=int, help="steps per trial (default per workload)")
    parser.add_argument("--trials", type=int, help="trials per sweep (default per workload)")
    parser.add_argument("--rounds", type=int, help="repeats of every sweep (default 3, quick 1)")
    parser.add_argument(
        "--threads",
        type=int,
        help="pin every trial's torch threads (default: wdlab's fixed TRIAL_THREADS, 1)",
    )
    parser.add_argument(
        "--cold", action="store_true", help="start the local workers afresh for every sweep"
    )
    parser.add_argument(
        "--no-warmup", action="store_true",
        help="no untimed 2-trial sweep of every kind first (then round 1 pays the start-up)",
    )
    parser.add_argument("--ray-idle-seconds", type=float, default=10.0,
                        help="first measure the idle Ray clusters' CPU use this long (0: skip)")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args(argv)
    rounds_wanted = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for name in workloads:
        if name not in WORKLOADS:
            parser.error(f"--workloads: {name!r} is not one of {', '.join(WORKLOADS)}")
    for kind in kinds:
        if kind not in KINDS:
            parser.error(f"--kinds: {kind!r} is not one of {', '.join(KINDS)}")
    specs = {}
    for name in workloads:
        full, quick, _ = WORKLOADS[name]
        trials, steps = quick if args.quick else full
        specs[name] = _spec(name, args.steps or steps, args.trials or trials, args.threads)

    drivers: dict[str, RayDriver] = {}
    cluster = None
    if any(k.startswith(("ray", "cluster")) for k in kinds):
        try:
            import ray  # noqa: F401
        except ImportError:
            print("ray is not installed (pip install wdlab[ray]); measuring the local pool only")
            kinds = [k for k in kinds if k.startswith("local")]
    try:
        if "ray x2" in kinds:
            drivers["ray x2"] = RayDriver(None)
            print(f"ray x2: ray.init(num_cpus=2) {drivers['ray x2'].connect_seconds:.1f} s "
                  "(apart)")
        if "cluster x2" in kinds:
            from ray.cluster_utils import Cluster

            start = time.perf_counter()
            cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    "num_cpus": 1,
                    "include_dashboard": False,
                    "_system_config": {"worker_niceness": 0},  # as wdlab's own Ray (above)
                },
            )
            cluster.add_node(num_cpus=1)
            drivers["cluster x2"] = RayDriver(cluster.address)
            print(f"cluster x2: two 1-CPU nodes up and connected in "
                  f"{time.perf_counter() - start:.1f} s (apart)")
        driver_pids = {d.process.pid for d in drivers.values()}
        if drivers and args.ray_idle_seconds > 0 and os.path.isdir("/proc"):
            time.sleep(5)  # let start-up settle
            share = _idle_ray_cpu(args.ray_idle_seconds, driver_pids)
            print(f"idle Ray processes: {100 * share:.1f}% of one core "
                  f"(over {args.ray_idle_seconds:g} s)")
        rounds: list[dict[str, dict[str, dict[str, float]]]] = []
        with tempfile.TemporaryDirectory() as tmp:

            def sweep(label: str, spec: SweepSpec, path: Path) -> dict[str, Any]:
                meter = CpuMeter(driver_pids) if os.path.isdir("/proc") else None
                if label in drivers:
                    row = drivers[label].sweep(spec, path)
                else:
                    if args.cold:
                        shutdown_workers()  # this sweep starts its workers afresh
                    row = measure(spec, path, int(label.split("x")[1]), "local", None)
                if meter is not None:
                    row["cpu"] = meter.stop()
                return row

            if not args.cold and not args.no_warmup and rounds_wanted:
                for name in specs:  # every worker imports what a trial of `name` needs
                    for label in kinds:
                        path = Path(tmp) / f"warmup-{name}-{label.replace(' ', '')}.db"
                        row = sweep(label, _spec(name, 2, 2, args.threads), path)
                        print(f"warm-up {name:<8} {label:<10} {row['wall']:6.2f} s (apart: "
                              "worker start-up, imports, first builds)", flush=True)
            for r in range(rounds_wanted):
                order = kinds[r % len(kinds):] + kinds[: r % len(kinds)]
                print(f"round {r + 1}/{rounds_wanted}: {', '.join(order)}", flush=True)
                this: dict[str, dict[str, dict[str, float]]] = {}
                for name, spec in specs.items():
                    this[name] = {}
                    for label in order:
                        path = Path(tmp) / f"r{r}-{name}-{label.replace(' ', '')}.db"
                        row = sweep(label, spec, path)
                        _print_row(name, label, row)
                        this[name][label] = row
                rounds.append(this)
    finally:
        for driver in drivers.values():
            driver.close()
        if cluster is not None:
            cluster.shutdown()
        shutdown_workers()
    if not rounds:
        return {}
    print()
    out: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "rounds": rounds,
        "ratios": _medians(rounds, kinds),
    }
    if drivers and "local x1" in kinds and "local x2" in kinds:
        print("note: Ray processes idled beside the local sweeps; their CPU comes from the "
              "idle core with 1 worker but from the workers with 2, so measure the scaling "
              "alone: --kinds 'local x1,local x2'")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
