"""Elastic benchmark (issue 16): submit -> RUNNING on a powered-down environment.

A 2-host temporary sandbox: node1 static, node2 alone in an elastic compute
environment (min_vcpus 0, idle_time_s 1) whose resume and suspend commands are
`hpcbatch sandbox host-up|host-down` (they start and stop node2's sshd). For
each run, with node2 POWERED_DOWN: submit a 1-CPU job to the elastic queue and
time, from the controller's own records and a TCP probe of node2's port:

- scheduling: submit until the resume command starts (hpcbatch's own)
- resume command: the command's run (the "boot": here, starting sshd)
- sshd up: command end until node2's port accepts TCP (0 when the command waits)
- connect and probe: port open until node2 is UP (SSH, agent upload and start,
  facts, reconcile: hpcbatch's own)
- launch: UP until the job is RUNNING (a pass and the launch: hpcbatch's own)

and prints each phase's median with hpcbatch's own part (target: under 1 s
beyond the host's boot). Baseline in the same run: submit -> RUNNING of the
same job on the static host, already up.

Run: `.venv/bin/python benchmarks/elastic.py [--runs 5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hpcbatch.client import Client
from hpcbatch.controller.app import Controller
from hpcbatch.controller.settings import ControllerSettings
from hpcbatch.core.states import HostState
from hpcbatch.sandbox import Sandbox, missing_prerequisites, temporary_sandbox

PHASES = ("scheduling", "resume command", "sshd up", "connect and probe", "launch")


def inventory(sb: Sandbox, where: Path) -> Path:
    text = sb.inventory.read_text()
    hosts = text[: text.index("[[compute_environments]]")].replace(
        "[[hosts]]\n", "[[hosts]]\ncpus = 2\n"
    )
    cmd = f"{sys.executable} -m hpcbatch.cli.main sandbox --root {sb.root}"
    tail = f"""
[[compute_environments]]
name = "static"
hosts = ["node1"]

[[compute_environments]]
name = "cloud"
hosts = ["node2"]
idle_time_s = 1
resume_timeout_s = 60
resume_command = "{cmd} host-up"
suspend_command = "{cmd} host-down"

[[queues]]
name = "batch"
compute_environments = ["static"]

[[queues]]
name = "cloud"
compute_environments = ["cloud"]
"""
    path = where / "inventory.toml"
    path.write_text(hosts + tail)
    return path


async def call(socket: Path, op: str, **args: Any) -> Any:
    def go() -> Any:
        with Client(socket, timeout=60) as client:
            return client.call(op, **args)

    return await asyncio.to_thread(go)


async def submit(c: Controller, queue: str) -> int:
    request = {"script": "#!/bin/sh\ntrue\n", "queue": queue}
    return int((await call(c.settings.socket, "submit", request=request))["job_id"])


async def until(predicate: Any, timeout: float = 60.0, step: float = 0.002) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        await asyncio.sleep(step)
    return time.time()


async def port_open(address: str, port: int) -> float:
    while True:
        try:
            _r, w = await asyncio.open_connection(address, port)
            w.close()
            return time.time()
        except OSError:
            await asyncio.sleep(0.002)


async def one_run(c: Controller, sb: Sandbox) -> dict[str, float]:
    host = c.cluster.hosts["node2"]
    await until(lambda: host.state == HostState.POWERED_DOWN)
    spec = c.inventory.hosts["node2"]
    t0 = time.time()
    job = await submit(c, "cloud")
    await until(lambda: host.state == HostState.POWERING_UP)
    opened = await port_open(spec.address, spec.port)
    up = await until(lambda: host.state == HostState.UP)
    live = c.jobs.live(job)
    await until(lambda: live is None or live.started is not None)
    (summary,) = await call(c.settings.socket, "wait", job_ids=[job], timeout_s=60)
    started = float(summary["started"])
    tm = c.power.timings["node2"]
    return {
        "scheduling": tm["resume_start"] - t0,
        "resume command": tm["resume_command_end"] - tm["resume_start"],
        "sshd up": max(0.0, opened - tm["resume_command_end"]),
        "connect and probe": up - max(opened, tm["resume_command_end"]),
        "launch": started - up,
        "total": started - t0,
    }


async def static_run(c: Controller) -> float:
    t0 = time.time()
    job = await submit(c, "batch")
    (summary,) = await call(c.settings.socket, "wait", job_ids=[job], timeout_s=60)
    return float(summary["started"]) - t0


async def main_async(runs: int) -> tuple[list[dict[str, float]], list[float]]:
    with temporary_sandbox(hosts=2, gpu_hosts=0) as sb:
        home = Path(tempfile.mkdtemp(prefix="hb-elastic-"))
        settings = ControllerSettings.build(inventory=inventory(sb, home), home=home)
        c = await Controller.create(settings)
        await c.start()
        try:
            await until(lambda: c.cluster.hosts["node1"].state == HostState.UP)
            static = [await static_run(c) for _ in range(runs)]
            return [await one_run(c, sb) for _ in range(runs)], static
        finally:
            await c.stop()
            shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    missing = missing_prerequisites()
    if missing:
        print("needs: " + ", ".join(missing), file=sys.stderr)
        return 1
    results, static = asyncio.run(main_async(args.runs))
    print(f"submit -> RUNNING on a powered-down elastic sandbox host, {args.runs} runs (ms)")
    for phase in (*PHASES, "total"):
        values = [r[phase] * 1000 for r in results]
        print(
            f"  {phase:<18} median {statistics.median(values):8.1f}  "
            f"[{min(values):.1f} - {max(values):.1f}]"
        )
    own = [(r["scheduling"] + r["connect and probe"] + r["launch"]) * 1000 for r in results]
    print(
        f"  hpcbatch's own (scheduling + connect and probe + launch): median "
        f"{statistics.median(own):.1f} ms, max {max(own):.1f} ms (target < 1000 ms)"
    )
    base = [s * 1000 for s in static]
    print(f"  baseline: submit -> RUNNING on the static host, already up: median "
          f"{statistics.median(base):.1f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
