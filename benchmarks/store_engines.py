"""The controller on SQLite against the controller on PostgreSQL, side by side, in one run.

One 4-host sandbox (real sshd on loopback), one private PostgreSQL server
(Debian's binaries, initdb in a temporary directory, Unix socket only; the
server's default durability: fsync on, synchronous_commit on), and the
controller in its own process (as benchmarks/dispatch.py starts it) with
`--store sqlite:///...` and then `--store postgresql://...`, each on a new
store. The same workloads as benchmarks/vs_slurm.py's store-bound rows:

  latency  submit -> SUCCEEDED of `true`, median and p95, ms
  e2e      500 trivial jobs submitted back to back over the API, until the last
           is final, jobs/s
  api      500 sequential API submissions into a disabled queue, jobs/s
  array    a 10,000-child array submitted through the API, ms
  cancel   cancel of those 10,000 pending children with one request, ms

    .venv/bin/python benchmarks/store_engines.py [--jobs 500] [--latency-runs 100]
        [--rounds 1] [--pg-sync on|off]

With --rounds N the engines alternate N times and each figure is the median
of its rounds (this machine is shared: alternating spreads the noise). Note
SQLite's default (`--sync normal`) does not fsync each commit; PostgreSQL's
default does (`--pg-sync off` sets synchronous_commit=off, the closer match).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.postgres_server

from dispatch import ControllerProcess, machine_info, percentile

from hpcbatch.client import Client
from hpcbatch.sandbox import Sandbox, missing_prerequisites, temporary_sandbox
from tests.postgres_server import TemporaryPostgres, missing

TRUE = "#!/bin/sh\ntrue\n"
ROWS: list[tuple[str, str, bool]] = [
    ("submit -> SUCCEEDED `true`, median", "ms", False),
    ("submit -> SUCCEEDED `true`, p95", "ms", False),
    ("N trivial jobs end to end (API submits)", "jobs/s", True),
    ("N sequential API submissions", "jobs/s", True),
    ("10,000-child array submit (API)", "ms", False),
    ("cancel 10,000 pending children (one request)", "ms", False),
]
"""(row, unit, higher is better); N is --jobs."""


def workloads(c: Client, n: int, latency_runs: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for _ in range(20):  # warm-up: connections, caches, the agent's first forks
        c.call("wait", job_ids=[c.call("submit", request={"script": TRUE})["job_id"]])
    lat = []
    for _ in range(latency_runs):
        t0 = time.perf_counter()
        job = c.call("submit", request={"script": TRUE, "name": "lat"})["job_id"]
        c.call("wait", job_ids=[job])
        lat.append(time.perf_counter() - t0)
    out[ROWS[0][0]] = statistics.median(lat) * 1000
    out[ROWS[1][0]] = percentile(lat, 95) * 1000
    t0 = time.perf_counter()
    ids = [c.call("submit", request={"script": TRUE, "name": "e2e"})["job_id"] for _ in range(n)]
    finals = c.call("wait", job_ids=ids, timeout_s=600)
    out[ROWS[2][0]] = n / (time.perf_counter() - t0)
    if not all(f["state"] == "SUCCEEDED" for f in finals):
        raise RuntimeError("a trivial job did not succeed")
    c.call("queue_update", queue="batch", state="DISABLED")
    t0 = time.perf_counter()
    for _ in range(n):
        c.call("submit", request={"script": TRUE, "name": "api"})
    out[ROWS[3][0]] = n / (time.perf_counter() - t0)
    c.call("cancel", queue="batch")
    t0 = time.perf_counter()
    c.call("submit", request={"script": TRUE, "name": "arr", "array": "0-9999"})
    out[ROWS[4][0]] = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    c.call("cancel", queue="batch")
    out[ROWS[5][0]] = (time.perf_counter() - t0) * 1000
    c.call("queue_update", queue="batch", state="ENABLED")
    return out


def measure(sb: Sandbox, store: str, n: int, latency_runs: int) -> dict[str, float]:
    ctl = ControllerProcess(sb)
    ctl.argv += ["--store", store]
    ctl.start()
    try:
        with ctl.client(timeout=600) as c:
            return workloads(c, n, latency_runs)
    finally:
        ctl.stop()
        ctl.cleanup(keep_log=False)


def fmt(value: float, unit: str) -> str:
    return f"{value:,.1f}" if unit != "ms" or value < 100 else f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--latency-runs", type=int, default=100)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--pg-sync", choices=["on", "off"], default="on")
    args = p.parse_args(argv)
    why = missing_prerequisites() + ([missing()] if missing() else [])
    if why:
        print("missing: " + ", ".join(str(w) for w in why), file=sys.stderr)
        return 2
    results: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgresql": []}
    with (
        temporary_sandbox(hosts=4, gpu_hosts=0) as sb,
        TemporaryPostgres(durable=True) as pg,
        tempfile.TemporaryDirectory(prefix="hb-sqlite-") as files,
    ):
        if args.pg_sync == "off":
            pg.sql("ALTER SYSTEM SET synchronous_commit = off")
            pg.sql("SELECT pg_reload_conf()")
        for r in range(args.rounds):
            for engine in ("sqlite", "postgresql"):
                if engine == "sqlite":
                    store = f"sqlite://{Path(files) / f'round{r}' / 'hpcbatch.db'}"
                else:
                    store = pg.url(pg.create_database(f"bench{r}"))
                print(f"round {r + 1}/{args.rounds}: {engine} ...", flush=True)
                results[engine].append(measure(sb, store, args.jobs, args.latency_runs))
    info = machine_info()
    print()
    print(
        f"machine: {info.get('cpu')} x{os.cpu_count()}, python {info.get('python')}, "
        f"load {os.getloadavg()[0]:.2f}; {args.rounds} round(s), medians; PostgreSQL "
        f"synchronous_commit={args.pg_sync}, on a Unix socket on this machine"
    )
    head = f"{'workload':46} {'unit':7} {'SQLite':>9} {'PostgreSQL':>11} {'PG/SQLite':>10}"
    print(head)
    print("-" * len(head))
    for row, unit, higher in ROWS:
        s = statistics.median(m[row] for m in results["sqlite"])
        g = statistics.median(m[row] for m in results["postgresql"])
        ratio = g / s if higher else s / g
        label = row.replace("N ", f"{args.jobs} ", 1)
        print(f"{label:46} {unit:7} {fmt(s, unit):>9} {fmt(g, unit):>11} {ratio:>9.2f}x")
    print("(PG/SQLite: PostgreSQL's figure as a fraction of SQLite's; above 1 is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
