"""Retention: purge 100,000 finished jobs while the API is asked, and how long it answers.

A real controller (its socket API, its store: a SQLite file) on a store filled
with `--jobs` finished jobs that ended 40 days ago (each with 4 transitions,
one attempt and, for one in ten, collected logs), plus 1,000 recent ones that
must stay. The inventory's one host is unreachable: the API and the store are
what is measured. Two client threads call `ping` and `jobs` (the last 50
jobs, from the store) back to back, first for `--quiet-s` seconds without a
purge (the baseline), then while `hpcbatch purge --before 30d` runs through
the API: the figure is the slowest answer (and the 99th percentile) in each
phase (target: under 100 ms during the purge), and the slowest of each
operation (`ping` never touches the store: it shows the event loop's own
delays on a loaded machine). Then the store's file and WAL sizes: the purge
gives the freed pages back (a SQLite file made with incremental auto_vacuum).

`--store postgresql`: the same on a real PostgreSQL server (Debian's binaries,
tests/postgres_server.py, with the server's durable defaults and autovacuum
as it comes), filled by COPY; the size reported is the purged tables' (what
the purge's VACUUM makes reusable rather than returns).

Run: `.venv/bin/python benchmarks/retention.py [--jobs 100000] [--store postgresql]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.postgres_server

from hpcbatch.client import Client
from hpcbatch.controller.app import Controller
from hpcbatch.controller.settings import ControllerSettings
from hpcbatch.store.db import Store, StoreUrl
from tests.postgres_server import TemporaryPostgres

DAY = 86_400.0
INVENTORY = """
[[hosts]]
name = "gone"
address = "127.0.0.1"
port = 9
work_dir = "/tmp/hpcbatch-retention-bench"

[retention]
enabled = false
"""


COLUMNS = {
    "jobs": ("id", "name", "user", "uid", "queue", "state", "reason", "request", "submitted",
             "started", "ended", "exit_code", "attempt"),
    "transitions": ("job_id", "ts", "old", "new", "reason"),
    "attempts": ("job_id", "attempt", "node", "host", "cpus", "memory_mb", "gpus", "state",
                 "created", "started", "ended", "exit_code"),
    "job_logs": ("job_id", "attempt", "node", "stream", "data", "size", "truncated",
                 "collected"),
}  # fmt: skip
STEPS = ((None, "SUBMITTED"), ("SUBMITTED", "RUNNABLE"), ("RUNNABLE", "STARTING"),
         ("STARTING", "SUCCEEDED"))  # fmt: skip


def rows(old: int, recent: int) -> dict[str, Iterator[tuple[Any, ...]]]:
    """Each table's rows for `old` jobs that ended 40 days ago and `recent` a minute ago."""
    now = time.time()
    request = json.dumps({"script": "#!/bin/sh\ntrue\n", "name": "bench", "queue": "default"})
    blob = zlib.compress(b"a line of output\n" * 200)
    spans = ((1, old, now - 40 * DAY), (old + 1, recent, now - 60))

    def each() -> Iterator[tuple[int, float]]:
        return ((i, ended) for first, count, ended in spans for i in range(first, first + count))

    return {
        "jobs": ((i, "bench", "ann", 1000, "default", "SUCCEEDED", "exit code 0", request,
                  e - 5, e - 3, e, 0, 1) for i, e in each()),
        "transitions": ((i, e - 5 + k, a, b, None) for i, e in each()
                        for k, (a, b) in enumerate(STEPS)),
        "attempts": ((i, 1, 0, "gone", 1, 0, "[]", "EXITED", e - 4, e - 3, e, 0)
                     for i, e in each()),
        "job_logs": ((i, 1, 0, "stdout", blob, 3400, 0, e) for i, e in each() if i % 10 == 0),
    }  # fmt: skip


async def make_store(url: StoreUrl) -> None:
    store = await Store.open(url)
    await store.close()


def fill_sqlite(path: Path, old: int, recent: int) -> None:
    """Finished jobs written straight into the file (as a controller would have)."""
    db = sqlite3.connect(path)
    with db:
        for table, table_rows in rows(old, recent).items():
            names = ", ".join(f'"{c}"' for c in COLUMNS[table])
            marks = ", ".join("?" * len(COLUMNS[table]))
            db.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", table_rows)
    db.close()


async def fill_postgres(dsn: str, old: int, recent: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for table, table_rows in rows(old, recent).items():
            await conn.copy_records_to_table(table, records=table_rows, columns=COLUMNS[table])
        await conn.execute("SELECT setval('jobs_id_seq', (SELECT max(id) FROM jobs))")
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def store_mb(url: StoreUrl) -> float:
    """The SQLite file (and its WAL), or the purged tables on PostgreSQL."""
    if url.path is not None:
        wal = url.path.with_name(url.path.name + "-wal")
        return (url.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) / 1e6
    conn = await asyncpg.connect(url.dsn)
    try:
        size = await conn.fetchval(
            "SELECT sum(pg_total_relation_size(t::regclass)) FROM unnest($1::text[]) t",
            [*COLUMNS, "outbox"],
        )
        return int(size) / 1e6
    finally:
        await conn.close()


class Prober:
    """Threads asking the API back to back; each answer's latency, by phase."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.phase = "quiet"
        self.times: dict[str, list[float]] = {"quiet": [], "purge": []}
        self.slowest: dict[tuple[str, str], float] = {}
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(op,), daemon=True) for op in ("ping", "jobs")
        ]
        for t in self.threads:
            t.start()

    def _run(self, op: str) -> None:
        args: dict[str, object] = {"all": True, "limit": 50} if op == "jobs" else {}
        with Client(self.socket, timeout=60) as client:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                client.call(op, **args)
                took, key = time.perf_counter() - t0, (self.phase, op)
                self.times[self.phase].append(took)
                self.slowest[key] = max(took, self.slowest.get(key, 0.0))
                time.sleep(0.005)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def report(name: str, xs: list[float]) -> str:
    xs = sorted(xs)
    p99 = xs[int(len(xs) * 0.99) - 1] if len(xs) >= 100 else xs[-1]
    return (
        f"{name}: {len(xs)} answers, median {statistics.median(xs) * 1000:.1f} ms,"
        f" p99 {p99 * 1000:.1f} ms, slowest {xs[-1] * 1000:.1f} ms"
    )


async def run(where: Path, url: StoreUrl, jobs: int, quiet_s: float) -> int:
    await make_store(url)
    t0 = time.perf_counter()
    if url.path is not None:
        await asyncio.to_thread(fill_sqlite, url.path, jobs, 1000)
    else:
        await fill_postgres(url.dsn, jobs, 1000)
    took, size = time.perf_counter() - t0, await store_mb(url)
    print(
        f"{url.engine} store filled: {jobs} old + 1000 recent finished jobs in {took:.1f} s,"
        f" {size:.1f} MB"
    )
    inventory = where / "inventory.toml"
    inventory.write_text(INVENTORY)
    settings = ControllerSettings.build(inventory=inventory, home=where, store=url)
    c = await Controller.create(settings)
    await c.start()
    try:
        probe = Prober(settings.socket)
        await asyncio.sleep(quiet_s)
        probe.phase = "purge"

        def purge() -> dict[str, object]:
            with Client(settings.socket, timeout=600) as client:
                result: dict[str, object] = client.call("purge", before=time.time() - 30 * DAY)
                return result

        done = await asyncio.to_thread(purge)
        # In a thread: a prober's last call is answered by this loop, which a join here
        # would block (the call then waited out its 60 s timeout and its thread died).
        await asyncio.to_thread(probe.close)
        left = await c.store.retention.count_final(time.time())
    finally:
        await c.stop()
    print(
        f"purge: {done['jobs']} jobs removed in {done['seconds']} s; {left} recent jobs kept;"
        f" {done.get('reclaimed_mb', 0)} MB given back"
    )
    print("  " + report("before the purge", probe.times["quiet"]))
    print("  " + report("during the purge", probe.times["purge"]))
    each = ", ".join(
        f"{op} {probe.slowest[('purge', op)] * 1000:.1f} ms" for op in ("ping", "jobs")
    )
    slowest = max(probe.times["purge"])
    print(
        f"  slowest answer during the purge: {slowest * 1000:.1f} ms ({each}; target: under 100 ms)"
    )
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end")
    print(f"  store after: {await store_mb(url):.1f} MB (was {size:.1f} MB)")
    return 0 if done["jobs"] == jobs and left == 1000 else 1


def quiet_logs() -> None:
    """The unreachable host's reconnect warnings are expected: not shown."""
    import logging

    logging.getLogger("hpcbatch").setLevel(logging.ERROR)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--quiet-s", type=float, default=3.0)
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    quiet_logs()
    where = Path(tempfile.mkdtemp(prefix="hb-retention-"))
    try:
        with ExitStack() as stack:
            url = StoreUrl.sqlite(where / "hpcbatch.db")
            if args.store == "postgresql":
                pg = stack.enter_context(TemporaryPostgres(durable=True))
                url = StoreUrl.parse(pg.url(pg.create_database()))
            return asyncio.run(run(where, url, args.jobs, args.quiet_s))
    finally:
        shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
