"""Gang launch benchmark: from allocation to every node's process running, N = 2, 4, 8.

One run brings up a temporary 8-host sandbox (real sshd on 127.0.0.2-9), runs
a controller in this process, and submits multi-node jobs (`#!/bin/sh\\ntrue`,
launch mode `all`, so every node runs a real process) one at a time. For each
job it reads the recorded times: the STARTING transition (the allocation,
written before any launch) and each node attempt's `started` (the shepherd's
clock just before it forks the node's process). "Gang launch" is the last
node's start minus the allocation; "first node" is the earliest. Also reported:
submit -> SUCCEEDED as seen by the client.

Run: `.venv/bin/python benchmarks/gang_launch.py [--runs 20] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from hpcbatch.client import Client
from hpcbatch.controller.app import Controller
from hpcbatch.controller.settings import ControllerSettings
from hpcbatch.sandbox import Sandbox, missing_prerequisites, temporary_sandbox


class Api:
    """The controller's Unix-socket API, called from a thread (the controller shares our loop)."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    async def __call__(self, op: str, **args: Any) -> Any:
        def call() -> Any:
            with Client(self.socket, timeout=300) as client:
                return client.call(op, **args)

        return await asyncio.to_thread(call)


@asynccontextmanager
async def running_controller(sb: Sandbox) -> AsyncIterator[tuple[Controller, Api]]:
    home = Path(tempfile.mkdtemp(prefix="hb-bench-"))
    settings = ControllerSettings.build(inventory=sb.inventory, home=home, heartbeat_s=5.0)
    c = await Controller.create(settings)
    await c.start()
    try:
        deadline = time.monotonic() + 60
        while sum(h.state == "UP" for h in c.cluster.hosts.values()) < len(sb.hosts):
            if time.monotonic() > deadline:
                raise SystemExit("hosts did not come up within 60 s")
            await asyncio.sleep(0.05)
        yield c, Api(settings.socket)
    finally:
        await c.stop()
        shutil.rmtree(home, ignore_errors=True)


def stats(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median": statistics.median(values), "min": min(values),
            "max": max(values)}  # fmt: skip


def print_spread(name: str, values: list[float], width: int = 24) -> None:
    """One benchmark row: `name  median [min-max]` (seconds) of `values`."""
    print(
        f"  {name:<{width}} {statistics.median(values):6.3f} [{min(values):.3f}-{max(values):.3f}]"
    )


def compare_main(
    doc: str,
    run: Callable[[int], Coroutine[Any, Any, dict[str, Any]]],
    title: str,
    rows: Sequence[tuple[str, str]],
    ratio: str,
    width: int = 24,
) -> dict[str, Any] | None:
    """The command line of the benchmarks that compare two ways of doing one thing:
    `--runs` and `--json`, the sandbox's prerequisites, then `run(runs)`'s result
    printed (`title` with the runs, each of `rows` (label, key) as median [min-max], and
    `ratio` with the result's ratio) and saved. The result; None where it cannot run."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    missing = missing_prerequisites()
    if missing:
        print("needs: " + ", ".join(missing), file=sys.stderr)
        return None
    r = asyncio.run(run(args.runs))
    print(title.format(runs=args.runs))
    for name, key in rows:
        print_spread(name, r[key], width)
    print("  " + ratio.format(ratio=r["ratio"]))
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return r


async def measure(api: Api, nodes: int, runs: int) -> dict[str, Any]:
    gang, first, total = [], [], []
    for i in range(runs + 1):  # the first one warms up
        t0 = time.time()
        job_id = (await api("submit", request={"script": "#!/bin/sh\ntrue\n", "nodes": nodes,
                                               "launch_mode": "all"}))["job_id"]  # fmt: skip
        (summary,) = await api("wait", job_ids=[job_id], timeout_s=60)
        t1 = time.time()
        if summary["state"] != "SUCCEEDED":
            raise SystemExit(f"job {job_id} ended {summary['state']}: {summary['reason']}")
        show = await api("show", job_id=job_id)
        alloc = next(t["ts"] for t in show["transitions"] if t["new"] == "STARTING")
        starts = [a["started"] for a in show["attempts"]]
        if i:
            gang.append(max(starts) - alloc)
            first.append(min(starts) - alloc)
            total.append(t1 - t0)
    return {"nodes": nodes, "gang_launch_s": stats(gang), "first_node_s": stats(first),
            "submit_to_done_s": stats(total)}  # fmt: skip


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    with temporary_sandbox(hosts=8, gpu_hosts=0) as sb:
        async with running_controller(sb) as (_, api):
            return [await measure(api, n, args.runs) for n in (2, 4, 8)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="jobs per node count")
    parser.add_argument("--json", type=Path, help="save the results here")
    args = parser.parse_args()
    missing = missing_prerequisites()
    if missing:
        print("needs: " + ", ".join(missing), file=sys.stderr)
        return 1
    results = asyncio.run(main_async(args))
    print(f"gang launch on an 8-host sandbox, {args.runs} jobs per size (ms, median [min-max])")
    print(f"{'nodes':>5}  {'alloc->all running':>22}  {'alloc->first':>20}  {'submit->done':>20}")
    for r in results:
        cells = [
            f"{r[k]['median'] * 1000:7.1f} [{r[k]['min'] * 1000:.0f}-{r[k]['max'] * 1000:.0f}]"
            for k in ("gang_launch_s", "first_node_s", "submit_to_done_s")
        ]
        print(f"{r['nodes']:>5}  {cells[0]:>22}  {cells[1]:>20}  {cells[2]:>20}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
