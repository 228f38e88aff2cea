"""What per-job limits cost (issue 15): the cgroup setup at launch, and live sampling.

1. Launch: one real host agent (the zipapp the controller uploads, as its own
   process on a temporary root) launches `#!/bin/sh\\ntrue` jobs, alternately
   with `limits` (a cgroup per attempt: made, limited, joined before exec, read
   and removed at the end) and without, in one run (`--block N`: N with, N
   without, and so on, so that a limited job follows a limited one and what
   the agent does after one exit, such as making the next spare, falls in the
   next limited launch's window as in a stream of jobs). Timed from sending
   `launch` to the `exit` event: the part of submit -> SUCCEEDED that the
   cgroup touches (the controller's own share is the same either way).
   Target: at most 2 ms added (median).
2. Sampling: the same agent with N running jobs in cgroups, heartbeat every
   `--heartbeat` s with each attempt's CPU and memory read from its cgroup
   (what `show` and the dashboard display); the agent's CPU time per second of
   wall time, against the same agent with the same N jobs launched without
   limits (nothing to sample). Target: under 1% of a core per host.

Run as root (or with a delegated cgroup, docs/accounting.md):
`.venv/bin/python benchmarks/limits.py [--jobs 200] [--running 100]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hpcbatch.core.usage import LiveUsage
from hpcbatch.transport.agent import cgroups
from hpcbatch.transport.agent_archive import archive


class Agent:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.n = 0
        self.waiting: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self.read())

    async def read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            key = msg.get("id") if "id" in msg else (msg.get("ev"), msg.get("attempt"))
            fut = self.waiting.pop(key, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def expect(self, key: Any) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[key] = fut
        return fut

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        self.n += 1
        fut = self.expect(self.n)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": self.n, "op": op, **fields}).encode() + b"\n")
        reply = await asyncio.wait_for(fut, 30)
        assert reply["ok"], reply
        return reply


async def start_agent(tmp: Path, heartbeat: float) -> Agent:
    pyz = tmp / "agent.pyz"
    pyz.write_bytes(archive())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(pyz), "--root", str(tmp / "root"), "--heartbeat", str(heartbeat),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24,
    )  # fmt: skip
    return Agent(proc)


LIMITS = {"memory_bytes": 256 << 20, "cpus": 1}


async def launch_cost(agent: Agent, jobs: int, block: int) -> tuple[list[float], list[float]]:
    """`block` jobs with limits, as many without, and so on: 1 alternates; more puts a
    limited job after a limited one (what the agent does after each, inside the next)."""
    on: list[float] = []
    off: list[float] = []
    for i in range(jobs):
        limited = i // block % 2 == 0
        attempt = f"{i}.1.0"
        done = agent.expect(("exit", attempt))
        extra = {"limits": LIMITS} if limited else {}
        t = time.perf_counter()
        await agent.call("launch", attempt=attempt, script="#!/bin/sh\ntrue\n", **extra)
        ev = await asyncio.wait_for(done, 30)
        (on if limited else off).append(time.perf_counter() - t)
        assert ev["code"] == 0, ev
        assert (ev["usage"].get("source") == "cgroup") == limited, ev
        await agent.call("ack", attempts=[attempt])
    return on, off


def cgroup_work(n: int) -> float:
    """What the agent and shepherd add per attempt, timed in-process (no fork noise):
    a spare renamed and limited, a waiting child placed in it; after the child's end,
    the usage read and the group removed."""
    layout = cgroups.probe(tempfile.gettempdir() + "/hb-limits-work")
    times = []
    for i in range(n):
        spare = cgroups.prepare(layout, f"{cgroups.SPARE}w{i}")  # off the launch path
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            os.read(r, 1)
            os._exit(0)
        t = time.perf_counter()
        cg = cgroups.create(layout, f"w{i}", LIMITS, spare)
        assert cg is not None
        for path in cg["dirs"].values():
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(child))
        took = time.perf_counter() - t
        os.write(w, b"x")
        os.waitpid(child, 0)
        os.close(r)
        os.close(w)
        t = time.perf_counter()
        cgroups.usage(cg)
        cgroups.remove(cg)
        times.append(took + time.perf_counter() - t)
    return statistics.median(times)


def controller_share(running: int, heartbeat: float) -> float:
    """The controller's side of sampling: one host's heartbeat of `running` attempts
    parsed and noted (core.usage.LiveUsage, what HostService does), as a share of a core."""
    live = LiveUsage()
    beats = 2000
    lines = [
        json.dumps({"ev": "heartbeat", "t": 1000.0 + k * heartbeat, "running": running,
                    "usage": {f"{i}.1.0": {"cpu_s": k * 0.5 + i, "mem_bytes": 1e8}
                              for i in range(running)}})
        for k in range(beats)
    ]  # fmt: skip
    t = time.process_time()
    for line in lines:
        event = json.loads(line)
        live.note(event["t"], event["usage"])
    per_beat = (time.process_time() - t) / beats
    return per_beat / heartbeat


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sampling_cost(
    tmp: Path, running: int, limited: bool, heartbeat: float, span: float
) -> float:
    agent = await start_agent(tmp, heartbeat)
    try:
        await agent.call("hello")
        extra = {"limits": LIMITS} if limited else {}
        for i in range(running):
            await agent.call(
                "launch", attempt=f"s{i}.1.0", script="#!/bin/sh\nsleep 600\n", **extra
            )
        await asyncio.sleep(1.0)
        c0, t0 = cpu_of(agent.proc.pid), time.monotonic()
        await asyncio.sleep(span)
        return (cpu_of(agent.proc.pid) - c0) / (time.monotonic() - t0)
    finally:
        await agent.call("fence", keep=[])
        agent.proc.kill()
        await agent.proc.wait()


async def amain(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="hb-limits-") as tmp:
        agent = await start_agent(Path(tmp), 0)
        hello = await agent.call("hello")
        cg = hello["facts"]["cgroups"]
        print(f"cgroups: version {cg['version']}, enforced {cg['enforced']}, {cg['controllers']}")
        if not cg["enforced"]:
            print(f"limits not enforced here ({cg['why']}): nothing to measure")
            return
        on, off = await launch_cost(agent, args.jobs, args.block)
        agent.proc.kill()
        await agent.proc.wait()
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    order = "alternating" if args.block == 1 else f"in blocks of {args.block}"
    print(f"launch -> exit of `true`, {len(on)} + {len(off)} jobs, {order}, one agent:")
    print(f"  limits off (baseline): median {m_off * 1e3:.2f} ms")
    print(f"  limits on (cgroup):    median {m_on * 1e3:.2f} ms")
    added = (m_on - m_off) * 1e3
    print(f"  added: {added:.2f} ms (target <= 2 ms: {'PASS' if added <= 2 else 'FAIL'})")
    work = cgroup_work(args.jobs)
    print(f"  the cgroup work alone (spare renamed, limits written, joined, read, removed),"
          f" in-process: median {work * 1e3:.2f} ms")  # fmt: skip
    for limited in (False, True):
        with tempfile.TemporaryDirectory(prefix="hb-limits-") as tmp:
            share = await sampling_cost(Path(tmp), args.running, limited, args.heartbeat, args.span)
        what = "sampled from cgroups" if limited else "baseline, no cgroups"
        print(f"agent CPU, {args.running} running jobs, heartbeat {args.heartbeat:g} s"
              f" ({what}): {share * 100:.2f}% of a core")  # fmt: skip
    ctl = controller_share(args.running, args.heartbeat)
    print(f"controller CPU per host, {args.running} running jobs sampled every"
          f" {args.heartbeat:g} s (parse + note): {ctl * 100:.3f}% of a core")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--block", type=int, default=1, help="jobs in a row with (without) limits")
    p.add_argument("--running", type=int, default=100)
    p.add_argument("--heartbeat", type=float, default=5.0)
    p.add_argument("--span", type=float, default=20.0)
    asyncio.run(amain(p.parse_args()))


if __name__ == "__main__":
    main()
