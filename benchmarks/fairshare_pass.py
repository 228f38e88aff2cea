"""Fair-share scheduling pass over 100 share identifiers (issue 16): one pure
`schedule()` call on a snapshot of 1,000 hosts and 10,000 runnable jobs.

The snapshot is `schedule_pass.build`'s (mixed hosts two-thirds full, four
queues, backfill), with each job given one of 100 share identifiers, the
fair-share queues given a weight for each (1 to 5) and their own half-life, and
one of them a compute reservation. In the same run, as baselines: the same
snapshot with every queue FIFO (the plain pass) and with per-user fair share
without weights (the pass before share identifiers). Target: under 50 ms.

Run: `.venv/bin/python benchmarks/fairshare_pass.py [--hosts 1000] [--jobs 10000]
[--shares 100] [--repeat 15] [--seed 1]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from schedule_pass import NOW, Snapshot, build, machine, measure, row

from hpcbatch.core.scheduler import Plan, QueuePolicy, schedule

HALF_LIFE = 86_400.0


def with_shares(
    s: Snapshot, n_shares: int, seed: int
) -> tuple[Snapshot, dict[float, dict[str, float]]]:
    rng = random.Random(seed)
    ids = [f"proj{i:03d}" for i in range(n_shares)]
    weights = {i: float(rng.randint(1, 5)) for i in ids}
    jobs = [dataclasses.replace(j, share_id=rng.choice(ids)) for j in s.jobs]
    running = [dataclasses.replace(r, share_id=rng.choice(ids)) for r in s.running]
    queues = []
    for q in s.queues:
        if q.policy == QueuePolicy.FAIRSHARE:
            q = dataclasses.replace(
                q,
                shares=weights,
                half_life_s=HALF_LIFE,
                compute_reservation=10 if q.name == "batch" else 0,
            )
        queues.append(q)
    usage = {i: rng.uniform(0, 5e7) for i in ids}
    by_half_life = {HALF_LIFE: {i: rng.uniform(0, 5e7) for i in ids}}
    return dataclasses.replace(
        s, jobs=jobs, running=running, queues=queues, usage=usage
    ), by_half_life


def timed(
    s: Snapshot, by_half_life: dict[float, dict[str, float]], repeat: int
) -> tuple[list[float], list[float], Plan]:
    """As `schedule_pass.measure`, with each queue's half-life usage passed too."""

    def run() -> Plan:
        return schedule(
            s.hosts, s.queues, s.jobs, now=NOW, running=s.running, compute_envs=s.ces,
            usage=s.usage, usage_by_half_life=by_half_life,
        )  # fmt: skip

    plan = run()  # warm-up, uncounted
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        plan = run()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return wall, cpu, plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--shares", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    print(f"# {machine()}")
    print(f"# {a.hosts} hosts, {a.jobs} runnable jobs, {a.shares} share identifiers, now={NOW:g}")
    print(
        f"{'pass':<34} {'jobs':>7} {'med ms':>9} {'p95 ms':>9} {'cpu ms':>9} {'us/job':>8} "
        f"{'starts':>7} {'resv':>5}"
    )
    fifo = build(a.hosts, a.jobs, a.seed, fairshare=False)
    wall, cpu, plan = measure(fifo, a.repeat)
    print(row("plain pass (FIFO), baseline", fifo, wall, cpu, plan))
    per_user = build(a.hosts, a.jobs, a.seed, fairshare=True)
    wall, cpu, plan = measure(per_user, a.repeat)
    print(row("fair share per user, no weights", per_user, wall, cpu, plan))
    shared, by_half_life = with_shares(per_user, a.shares, a.seed)
    wall, cpu, plan = timed(shared, by_half_life, a.repeat)
    label = f"fair share, {a.shares} ids, weights"
    print(row(label, shared, wall, cpu, plan))
    med = statistics.median(wall) * 1000
    cpu_med = statistics.median(cpu) * 1000
    print(
        f"# fair share over {a.shares} share identifiers: median {med:.1f} ms wall, "
        f"{cpu_med:.1f} ms CPU (target < 50 ms)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
