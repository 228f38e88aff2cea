"""`acct` over a large history: one user's week out of 1,000,000 finished jobs (issue 15).

Builds a temporary store with the real schema (Store.open runs the migrations),
then writes the rows directly (1,000,000 finished jobs of 100 users over 20
weeks, one attempt row with usage each), and times what `hpcbatch acct -u U
-S WEEK_START -E WEEK_END` costs the controller: the store query
(`JobsTable.acct_jobs`, on the (user, ended) index) plus the rows and their
figures (`core.usage.acct_rows`). The baseline, in the same run on the same
data: the same query with the index dropped (a full scan).

Run: `.venv/bin/python benchmarks/acct.py [--jobs 1000000] [--repeat 5]`.
Target: under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from hpcbatch.core.usage import acct_rows
from hpcbatch.store.db import Store

WEEK = 7 * 86400
USERS = 100
WEEKS = 20
T0 = 1_780_000_000.0
REQUEST = json.dumps({"script": "#!/bin/sh\ntrue\n", "cpus": 2, "memory_mb": 2048})


def fill(path: Path, jobs: int) -> None:
    rng = random.Random(15)
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous = OFF")
    batch = 50_000
    for first in range(1, jobs + 1, batch):
        job_rows = []
        attempt_rows = []
        for job_id in range(first, min(first + batch, jobs + 1)):
            submitted = T0 + rng.random() * WEEKS * WEEK
            started = submitted + rng.random() * 600
            ended = started + 10 + rng.random() * 3600
            user = f"user{rng.randrange(USERS)}"
            job_rows.append((job_id, f"job{job_id % 97}", user, 1000, "batch", "SUCCEEDED",
                             "exit code 0", REQUEST, submitted, started, ended, 0, 1))  # fmt: skip
            cpu = (ended - started) * rng.random() * 2
            attempt_rows.append((job_id, 1, 0, f"node{job_id % 64}", 2, 2048, "[]", "EXITED",
                                 started, started, ended, 0, ended - started, cpu * 0.9,
                                 cpu * 0.1, rng.randrange(1 << 30), "cgroup"))  # fmt: skip
        db.executemany(
            "INSERT INTO jobs (id, name, user, uid, queue, state, reason, request, submitted,"
            " started, ended, exit_code, attempt) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            job_rows,
        )
        db.executemany(
            "INSERT INTO attempts (job_id, attempt, node, host, cpus, memory_mb, gpus, state,"
            " created, started, ended, exit_code, elapsed_s, cpu_user_s, cpu_sys_s,"
            " mem_peak_bytes, usage_source) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            attempt_rows,
        )
        db.commit()
    db.execute("ANALYZE")
    db.commit()
    db.close()


async def time_query(path: Path, repeat: int) -> tuple[list[float], int]:
    store = await Store.open(path)
    try:
        start = T0 + 10 * WEEK
        times = []
        count = 0
        for _ in range(repeat):
            t = time.perf_counter()
            jobs = await store.jobs.acct_jobs(user="user7", start=start, end=start + WEEK)
            rows = acct_rows(jobs, per_node=True)
            times.append(time.perf_counter() - t)
            count = len(jobs)
            assert len(rows) == 2 * count
        return times, count
    finally:
        await store.close()


async def amain(jobs: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="hb-acct-") as tmp:
        path = Path(tmp) / "hpcbatch.db"
        store = await Store.open(path)  # the schema, migrations included
        await store.close()
        t = time.perf_counter()
        fill(path, jobs)
        print(f"filled {jobs:,} finished jobs (+ attempts) in {time.perf_counter() - t:.1f} s")
        with_index, n = await time_query(path, repeat)
        db = sqlite3.connect(path)
        db.execute("DROP INDEX jobs_user_ended")
        db.execute("DROP INDEX jobs_ended")
        db.commit()
        db.close()
        without, _ = await time_query(path, max(1, repeat // 2))
        print(f"acct -u user7 over one week: {n} jobs, {2 * n} rows (job + node)")
        print(f"  with the (user, ended) index: median {statistics.median(with_index) * 1e3:.1f} ms"
              f"  (min {min(with_index) * 1e3:.1f}, max {max(with_index) * 1e3:.1f})")  # fmt: skip
        print(f"  baseline, no index (full scan): median {statistics.median(without) * 1e3:.1f} ms")
        verdict = "PASS" if statistics.median(with_index) < 1.0 else "FAIL"
        print(f"  target < 1 s: {verdict}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    asyncio.run(amain(args.jobs, args.repeat))


if __name__ == "__main__":
    main()
