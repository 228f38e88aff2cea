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
    job = c.jobs.live(job_id)
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
    job = c.jobs.live(job_id)
    listed = (await c.pool[victim].request("hello"))["attempts"]
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


RETRY_42 = {"attempts": 2, "evaluate_on_exit": [{"on_exit_code": "42", "action": "RETRY"}]}


async def test_exit_rule_retries_the_whole_gang(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    marker = uuid.uuid4().hex
    script = '#!/bin/sh\nif [ "$HPCBATCH_ATTEMPT" = 1 ]; then exit 42; fi\nsrun true\n'
    job_id = await api.submit(script=script, nodes=2, env={"TEST_MARK": marker}, retry=RETRY_42)
    (s,) = await api.wait(job_id, timeout=60)
    assert s["state"] == "SUCCEEDED", s
    shown = await api("show", job_id=job_id)
    by_attempt: dict[int, list[dict[str, Any]]] = {}
    for a in shown["attempts"]:
        by_attempt.setdefault(a["attempt"], []).append(a)
    # Both nodes of attempt 1 ended (the main node with 42, the other stopped with it),
    # and attempt 2 ran on two nodes again.
    assert sorted(by_attempt) == [1, 2]
    assert all(len(nodes) == 2 for nodes in by_attempt.values()), by_attempt
    assert all(a["state"] != "RUNNING" and a["ended"] for a in by_attempt[1]), by_attempt[1]
    assert [a["exit_code"] for a in by_attempt[1] if a["node"] == 0] == [42]
    retries = [
        t for t in shown["transitions"] if t["new"] == "RUNNABLE" and t["old"] != "SUBMITTED"
    ]
    assert len(retries) == 1 and "exit code 42" in retries[0]["reason"], retries
    await until(lambda: not job_processes(marker), timeout=10, what="nothing left")
    await all_released(c)


async def test_lost_node_retries_the_whole_gang_elsewhere(
    sandbox: Sandbox, controller_factory: Any
) -> None:
    c, api = await controller_factory()
    marker = uuid.uuid4().hex
    script = '#!/bin/sh\nif [ "$HPCBATCH_ATTEMPT" = 1 ]; then srun sleep 300; fi\nsrun true\n'
    job_id = await api.submit(
        script=script, nodes=3, env={"TEST_MARK": marker}, retry={"attempts": 2}
    )
    job = c.jobs.live(job_id)
    await until(lambda: job.state == "RUNNING", what="running")
    first = {a.node: a.host for a in job.attempts}
    await until(lambda: sorted(task_hosts(marker)) == sorted(first.values()), what="tasks")
    victim = first[1]
    kill_sshd(sandbox, victim)
    try:
        (s,) = await api.wait(job_id, timeout=60)
        assert s["state"] == "SUCCEEDED", s
        shown = await api("show", job_id=job_id)
        second = {a["host"] for a in shown["attempts"] if a["attempt"] == 2}
        assert len(second) == 3 and victim not in second, shown["attempts"]
        lost = [a for a in shown["attempts"] if a["attempt"] == 1 and a["host"] == victim]
        assert lost and lost[0]["state"] != "RUNNING", lost
        retried = [t for t in shown["transitions"] if t["reason"].startswith("Retry:")]
        assert retried and f"host {victim} lost" in retried[0]["reason"], retried
    finally:
        start_host(sandbox, victim)
    # Back: attempt 1's processes on the victim are fenced; nothing is left anywhere.
    await until(lambda: c.cluster.hosts[victim].state == "UP", timeout=30, what="back")
    await until(lambda: not job_processes(marker), timeout=15, what="fenced")
    await all_released(c)
