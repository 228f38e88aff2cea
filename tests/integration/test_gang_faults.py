"""Faults of multi-node jobs on the real sandbox: a lost node, a killed node, cancel.

Each job carries a unique marker in its environment; the tests find every
process of the job on this machine (all sandbox hosts share it) by that marker
in /proc/<pid>/environ, which tells which sandbox host each one runs on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from typing import Any

import pytest

from hpcbatch.controller.app import Controller
from hpcbatch.sandbox import Sandbox, start_host
from tests.integration.conftest import Api, until
from tests.integration.test_faults import kill_sshd

pytestmark = pytest.mark.sshd

# Every node runs a sleep through srun (the relay), so processes exist on all of them.
SCRIPT = "#!/bin/sh\nsrun sleep 300\n"


def job_processes(marker: str) -> dict[int, str]:
    """pid -> sandbox host of every live process whose environment holds `marker`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            if env.get(b"TEST_MARK") == marker.encode():
                found[int(entry)] = env.get(b"HPCBATCH_SANDBOX_HOST", b"?").decode()
    return found


def task_hosts(marker: str) -> list[str]:
    out = []
    for pid, host in job_processes(marker).items():
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            if f.read() == b"sleep\0" + b"300\0":
                out.append(host)
    return out


async def start_gang(c: Controller, api: Api, nodes: int) -> tuple[int, str, dict[int, str]]:
    marker = uuid.uuid4().hex
    job_id = await api.submit(script=SCRIPT, nodes=nodes, env={"TEST_MARK": marker})
    job = c.jobs.active[job_id]
    await until(lambda: job.state == "RUNNING", what="running")
    hosts = {a.node: a.host for a in job.attempts}
    # srun's tasks (`sleep 300`) on every node, started through the relay.
    await until(
        lambda: sorted(task_hosts(marker)) == sorted(hosts.values()),
        what="a task on every node",
    )
    return job_id, marker, hosts


async def all_released(c: Controller) -> None:
    await until(lambda: all(not h.holders for h in c.cluster.hosts.values()), what="released")


async def test_lost_node_fails_the_job_fast(sandbox: Sandbox, controller_factory: Any) -> None:
    c, api = await controller_factory()
    job_id, marker, hosts = await start_gang(c, api, 4)
    victim = hosts[2]
    t0 = time.monotonic()
    kill_sshd(sandbox, victim)
    try:
        (s,) = await api.wait(job_id, timeout=20)
        assert time.monotonic() - t0 < 10
        assert s["state"] == "FAILED"
        assert s["reason"].startswith(f"host {victim} lost (node 2): ")
        await all_released(c)
        # The surviving nodes' processes end within seconds (the lost node keeps its
        # holder until it comes back: it cannot be reached).
        await until(
            lambda: set(job_processes(marker).values()) <= {victim}, timeout=10, what="killed"
        )
    finally:
        start_host(sandbox, victim)
    # Back: the stale attempt is fenced, nothing of the job is left anywhere.
    await until(lambda: c.cluster.hosts[victim].state == "UP", timeout=30, what="back")
    await until(lambda: not job_processes(marker), timeout=15, what="fenced")
    again = await api.submit(script="#!/bin/sh\ntrue\n", nodes=4)
    (s,) = await api.wait(again, timeout=30)
    assert s["state"] == "SUCCEEDED"


async def test_killed_node_process_fails_the_job(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    job_id, marker, hosts = await start_gang(c, api, 3)
    victim = hosts[1]
    # The holder of node 1: the process of its attempt (a sleep that srun did not start).
    job = c.jobs.active[job_id]
    listed = (await c.links[victim].request("hello"))["attempts"]
    holder_pid = next(int(r["pid"]) for r in listed if r["attempt"] == job.attempts[1].attempt_id)
    os.kill(holder_pid, signal.SIGKILL)
    (s,) = await api.wait(job_id, timeout=20)
    assert s["state"] == "FAILED"
    assert s["reason"] == f"node 1 ({victim}) failed: its holder process ended (killed by SIGKILL)"
    await until(lambda: not job_processes(marker), timeout=10, what="all processes gone")
    await all_released(c)


async def test_cancel_stops_every_node_within_seconds(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    job_id, marker, _ = await start_gang(c, api, 4)
    assert len(job_processes(marker)) >= 4 + 3  # a task per node, 3 holders, srun, ...
    t0 = time.monotonic()
    await api("cancel", job_ids=[job_id])
    await until(lambda: not job_processes(marker), timeout=10, what="all processes gone")
    elapsed = time.monotonic() - t0
    (s,) = await api.wait(job_id)
    assert s["state"] == "FAILED" and s["reason"].startswith("terminated by")
    assert elapsed < 5
    await all_released(c)
