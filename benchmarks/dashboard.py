"""Dashboard responsiveness with 10,000 jobs: first draw, event bursts, keys, sorting.

    .venv/bin/python benchmarks/dashboard.py [--jobs 10000]

Runs the real app headless (Textual's Pilot, 120x40) on a model of N
single jobs (no controller: this measures the dashboard's own cost; the
Pilot tests cover the controller's side). Times are wall-clock
(`time.perf_counter`), median of the repeats where there are repeats. Key
times go through Pilot, which waits for the app to be idle and a frame to be
drawn: compare with `--jobs 10` for that fixed part.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from hpcbatch.dashboard import create_app
from hpcbatch.dashboard.jobs_view import JobsView
from hpcbatch.dashboard.model import Model
from hpcbatch.dashboard.rows import JobFilter, job_rows

NOW = 1_700_000_000.0
STATES = ["RUNNABLE", "RUNNING", "SUCCEEDED", "PENDING", "FAILED"]


def jobs(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": i, "name": f"job-{i % 97}", "user": f"user{i % 7}", "queue": "batch",
            "state": STATES[i % 5], "reason": "Resources: needs 4 CPUs" if i % 5 == 0 else None,
            "submitted": NOW - 5000 + i * 0.1, "started": NOW - 100 if i % 5 in (1, 2, 4) else None,
            "ended": NOW - 10 if i % 5 in (2, 4) else None, "exit_code": None, "attempt": 1,
            "nodes": 1, "cpus": 1 + i % 4, "memory_mb": 1024, "gpus": 0, "time_limit_s": 3600,
            "hosts": [f"node{i % 4 + 1}"] if i % 5 == 1 else [], "display_id": str(i),
            "array_parent": None, "array_index": None, "array_size": None, "definition": None,
        }
        for i in range(1, n + 1)
    ]  # fmt: skip


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def main(n: int) -> None:
    model = Model(user="bench", admin=True)
    model.load(jobs(n), [], [])
    print(f"dashboard benchmark: {n} jobs, terminal 120x40")

    samples = []
    for _ in range(10):
        t0 = time.perf_counter()
        rows = job_rows(model, JobFilter(), now=NOW)
        samples.append(time.perf_counter() - t0)
    print(f"  build rows (filter, sort, {len(rows)} rows):      {ms(statistics.median(samples))}")
    flt = JobFilter.parse("-t R,Q -u user3")
    t0 = time.perf_counter()
    rows = job_rows(model, flt, now=NOW, sort="elapsed", reverse=True)
    print(f"  build rows, filtered and sorted ({len(rows)} rows): {ms(time.perf_counter() - t0)}")

    app = create_app(model=model, clock=lambda: NOW)
    async with app.run_test(size=(120, 40)) as pilot:
        view = app.query_one(JobsView)
        await pilot.pause()
        samples = []
        for _ in range(10):
            t0 = time.perf_counter()
            view.redraw()  # rows rebuilt, visible lines rendered on the next frame
            samples.append(time.perf_counter() - t0)
            await pilot.pause()
        print(f"  rebuild the jobs view (median):                {ms(statistics.median(samples))}")

        presses = []
        for _ in range(50):
            t0 = time.perf_counter()
            await pilot.press("down")
            presses.append(time.perf_counter() - t0)
        print(f"  cursor key, press to screen updated (median): {ms(statistics.median(presses))}")
        t0 = time.perf_counter()
        await pilot.press("end")
        print(f"  end key (to row {n}):                         {ms(time.perf_counter() - t0)}")
        t0 = time.perf_counter()
        await pilot.press("s")
        print(f"  sort by the next column:                       {ms(time.perf_counter() - t0)}")

        # A burst of pushed events, as when 10,000 jobs change state at once.
        drawn = 0
        original = view.redraw

        def counting() -> None:
            nonlocal drawn
            drawn += 1
            original()

        view.redraw = counting  # type: ignore[method-assign]
        t0 = time.perf_counter()
        for i in range(1, n + 1):
            job = dict(model.jobs[i], state="RUNNING", started=NOW - 5, hosts=["node1"])
            model.apply({"event": "job", "job": job})
            app.request_redraw()
            if i % 500 == 0:
                await asyncio.sleep(0)  # events arrive from a socket: the loop runs between
        applied = time.perf_counter() - t0
        while not all(r.state == "RUNNING" for r in view.rows):
            await pilot.pause(0.02)
        shown = time.perf_counter() - t0
        print(f"  apply {n} pushed job events:                {ms(applied)}")
        print(f"  first event to all of them on screen:         {ms(shown)}")
        print(f"  redraws for that burst (coalesced):           {drawn}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    asyncio.run(main(parser.parse_args().jobs))
