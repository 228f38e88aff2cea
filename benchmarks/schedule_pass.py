"""Scheduling-pass benchmark: how long one pure `schedule()` call takes.

Builds in-memory snapshots (no controller, no SSH, no store): 1,000 hosts of
mixed shapes (CPU-only, large-memory, 8-GPU hosts; three fabric islands), a
cluster about two-thirds full of running allocations with start times and
time limits (so backfill has ends to reason about), four queues over two
compute environments, 40 users, and N runnable jobs (mostly single-node, some
GPU, some multi-node with and without a fabric, some exclusive). Then it times
`schedule()` on the same snapshot several times and prints the median and p95.

Run: `.venv/bin/python benchmarks/schedule_pass.py [--hosts 1000] [--jobs 1000,10000,100000]
[--repeat 15] [--seed 1]`. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hpcbatch.core.records import Placement
from hpcbatch.core.scheduler import (
    ComputeEnvView,
    HostView,
    JobView,
    Plan,
    QueuePolicy,
    QueueView,
    RunningView,
    schedule,
)

NOW = 1_000_000.0
HOST_SHAPES = [  # (share of hosts, cpus, memory MB, gpus)
    (0.60, 64, 256_000, 0),
    (0.20, 32, 128_000, 0),
    (0.10, 48, 512_000, 8),
    (0.10, 128, 1_024_000, 0),
]
ISLANDS = [("ib-a", 0.20), ("ib-b", 0.15), ("ib-c", 0.10)]  # the rest have no fabric
USERS = [f"user{i:02d}" for i in range(40)]


@dataclass
class Snapshot:
    hosts: list[HostView]
    queues: list[QueueView]
    ces: list[ComputeEnvView]
    running: list[RunningView]
    jobs: list[JobView]
    usage: dict[str, float]


def build(n_hosts: int, n_jobs: int, seed: int, fairshare: bool | None) -> Snapshot:
    """A snapshot; `fairshare`: True/False forces every queue's policy, None mixes them."""
    rng = random.Random(seed)
    shapes: list[tuple[int, int, int]] = []
    for share, cpus, mem, gpus in HOST_SHAPES:
        shapes += [(cpus, mem, gpus)] * round(share * n_hosts)
    shapes = (shapes + [HOST_SHAPES[0][1:]] * n_hosts)[:n_hosts]  # type: ignore[list-item]
    rng.shuffle(shapes)
    fabrics: list[str | None] = []
    for island, share in ISLANDS:
        fabrics += [island] * round(share * n_hosts)
    fabrics += [None] * (n_hosts - len(fabrics))
    rng.shuffle(fabrics)

    hosts: list[HostView] = []
    running: list[RunningView] = []
    job_id = 1
    for i, ((cpus, mem, gpus), fabric) in enumerate(zip(shapes, fabrics, strict=True)):
        name = f"node{i:04d}"
        used_c = used_m = 0
        used_g: list[int] = []
        if rng.random() < 0.08:  # a whole-host job
            limit = rng.choice([3600.0, 4 * 3600.0, None])
            p = Placement(name, cpus, mem, tuple(range(gpus)), exclusive=True)
            running.append(
                RunningView(job_id, "batch", (p,), NOW - rng.uniform(0, 3000), limit, "user00")
            )
            job_id += 1
            hosts.append(
                HostView(
                    name, cpus, mem, tuple(range(gpus)), fabric,
                    used_cpus=cpus, used_memory_mb=mem,
                    used_gpus=frozenset(range(gpus)), exclusive=True,
                )
            )  # fmt: skip
            continue
        target = rng.choice([0.0, 0.5, 0.75, 0.9, 1.0, 1.0])
        while used_c < target * cpus:
            c = min(rng.choice([1, 2, 4, 8, 16]), cpus - used_c)
            m = min(c * rng.choice([1000, 2000, 4000]), mem - used_m)
            g = [x for x in range(gpus) if x not in used_g][: rng.choice([0, 0, 1, 2])]
            used_c += c
            used_m += m
            used_g += g
            limit = rng.choice([600.0, 3600.0, 6 * 3600.0, 24 * 3600.0, None])
            running.append(
                RunningView(
                    job_id,
                    rng.choice(["batch", "short", "gpu"]),
                    (Placement(name, c, m, tuple(g)),),
                    NOW - rng.uniform(0, 3600),
                    limit,
                    rng.choice(USERS),
                    compute_env="ce-gpu" if gpus else "ce-cpu",
                )
            )
            job_id += 1
        hosts.append(
            HostView(
                name, cpus, mem, tuple(range(gpus)), fabric,
                used_cpus=used_c, used_memory_mb=used_m, used_gpus=frozenset(used_g),
            )
        )  # fmt: skip

    cpu_hosts = tuple(h.name for h in hosts if not h.gpus)
    gpu_hosts = tuple(h.name for h in hosts if h.gpus)
    ces = [
        ComputeEnvView("ce-cpu", cpu_hosts),
        ComputeEnvView("ce-gpu", gpu_hosts, max_vcpus=sum(h.cpus for h in hosts if h.gpus)),
    ]

    def policy(mixed: QueuePolicy) -> QueuePolicy:
        if fairshare is None:
            return mixed
        return QueuePolicy.FAIRSHARE if fairshare else QueuePolicy.FIFO

    queues = [
        QueueView("urgent", 900, compute_envs=("ce-cpu", "ce-gpu"), max_running=200),
        QueueView(
            "gpu", 500, compute_envs=("ce-gpu",), policy=policy(QueuePolicy.FAIRSHARE),
            default_time_limit_s=4 * 3600.0,
        ),
        QueueView(
            "batch", 100, compute_envs=("ce-cpu", "ce-gpu"), policy=policy(QueuePolicy.FAIRSHARE),
            default_time_limit_s=12 * 3600.0,
        ),
        QueueView(
            "short", 100, compute_envs=("ce-cpu",), policy=policy(QueuePolicy.FIFO),
            default_time_limit_s=3600.0,
        ),
    ]  # fmt: skip
    jobs: list[JobView] = []
    for i in range(n_jobs):
        jid = job_id + i
        user = rng.choice(USERS)
        limit = rng.choice([300.0, 1800.0, 3600.0, 4 * 3600.0, None])
        r = rng.random()
        if r < 0.02:
            jobs.append(JobView(jid, "urgent", cpus=rng.choice([4, 8]), memory_mb=8000, user=user,
                                time_limit_s=limit))  # fmt: skip
        elif r < 0.10:
            jobs.append(
                JobView(jid, "gpu", cpus=rng.choice([4, 8, 12]), memory_mb=32_000,
                        gpus=rng.choice([1, 1, 2, 4, 8]), user=user, time_limit_s=limit)
            )  # fmt: skip
        elif r < 0.15:
            jobs.append(
                JobView(jid, "batch", cpus=rng.choice([16, 32]), memory_mb=64_000,
                        nodes=rng.choice([2, 4, 8, 16]), fabric=rng.choice([None, "any"]),
                        user=user, time_limit_s=limit)
            )  # fmt: skip
        elif r < 0.17:
            jobs.append(JobView(jid, "batch", cpus=8, exclusive=True, user=user,
                                time_limit_s=limit))  # fmt: skip
        elif r < 0.60:
            jobs.append(
                JobView(jid, "batch", cpus=rng.choice([1, 2, 4, 8]),
                        memory_mb=rng.choice([1000, 2000, 4000, 8000, 16_000]), user=user,
                        time_limit_s=limit, throttle_group=f"a{i % 50}", throttle_limit=20)
            )  # fmt: skip
        else:
            jobs.append(
                JobView(jid, "short", cpus=rng.choice([1, 1, 2, 4]),
                        memory_mb=rng.choice([500, 1000, 2000]), user=user, time_limit_s=limit)
            )  # fmt: skip
    usage = {u: rng.uniform(0, 5e7) for u in USERS}
    return Snapshot(hosts, queues, ces, running, jobs, usage)


def run(s: Snapshot, backfill: bool = True) -> Plan:
    return schedule(
        s.hosts,
        s.queues,
        s.jobs,
        now=NOW,
        running=s.running,
        compute_envs=s.ces,
        usage=s.usage,
        backfill=backfill,
    )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def measure(
    s: Snapshot, repeat: int, backfill: bool = True
) -> tuple[list[float], list[float], Plan]:
    """Wall-clock and CPU times of `repeat` passes (CPU time: this process only, which
    is steadier than wall time on a machine shared with other work)."""
    plan = run(s, backfill)  # warm-up, uncounted
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        plan = run(s, backfill)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return wall, cpu, plan


def row(label: str, s: Snapshot, wall: list[float], cpu: list[float], plan: Plan) -> str:
    med = statistics.median(wall) * 1000
    p95 = percentile(wall, 95) * 1000
    cpu_med = statistics.median(cpu) * 1000
    per_job = cpu_med * 1000 / max(len(s.jobs), 1)
    return (
        f"{label:<34} {len(s.jobs):>7} {med:>9.1f} {p95:>9.1f} {cpu_med:>9.1f} {per_job:>8.2f} "
        f"{len(plan.starts):>7} {len(plan.reservations):>5}"
    )


def machine() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = "?"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"python {platform.python_version()}, {cpu}, commit {commit or '?'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--jobs", default="1000,10000,100000", help="comma-separated job counts")
    ap.add_argument("--repeat", type=int, default=15, help="timed passes per row (fewer at 100k)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.jobs.split(",") if x]
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(machine())
    header = (
        f"{'pass':<34} {'jobs':>7} {'median':>9} {'p95':>9} {'cpu med':>9} {'us/job':>8} "
        f"{'starts':>7} {'resv':>5}"
    )
    print(
        f"\n{args.hosts} hosts; ms: wall-clock median and p95, CPU-time median; "
        f"us/job from CPU time\n{header}"
    )
    for n in counts:
        s = build(args.hosts, n, args.seed, None)
        repeat = max(3, args.repeat // 3) if n >= 100_000 else args.repeat
        wall, cpu, plan = measure(s, repeat)
        print(row("mixed FIFO/fair share, backfill", s, wall, cpu, plan))
    n = 10_000 if 10_000 in counts or not counts else counts[0]
    print()
    for label, fair, backfill in [
        ("all FIFO, backfill off", False, False),
        ("all FIFO, backfill on", False, True),
        ("all fair share, backfill off", True, False),
        ("all fair share, backfill on", True, True),
    ]:
        s = build(args.hosts, n, args.seed, fair)
        wall, cpu, plan = measure(s, args.repeat, backfill)
        print(row(label, s, wall, cpu, plan))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
