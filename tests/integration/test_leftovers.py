"""Nothing left behind: `sandbox down` stops what its hosts started, and a gang's
holder does not outlive its job when the main node's exit is collected while the
holder's host is out of reach (a controller restart).

Processes are found by a marker in their environment (/proc/<pid>/environ), as
in test_gang_faults.py: every sandbox host runs on this machine.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.sandbox import (
    Sandbox,
    sandbox_down,
    sandbox_processes,
    start_host,
    stop_host,
    temporary_sandbox,
)
from tests.integration.conftest import until
from tests.integration.test_gang_faults import job_processes

pytestmark = pytest.mark.sshd

BASE = 120  # this module's own sandbox: 127.0.0.120


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_sandbox_down_stops_what_left_the_session() -> None:
    """A process a host started and detached (setsid, its session closed) is stopped by
    `sandbox down`; a process of this user outside the sandbox, even one carrying the
    mark of another sandbox, is not."""
    duration = f"1000.{uuid.uuid4().int % 10**9:09d}"  # tells this test's sleeps apart
    with temporary_sandbox(hosts=1, gpu_hosts=0, base_address=BASE) as sb:
        subprocess.run(
            ["ssh", "-F", str(sb.ssh_config), sb.hosts[0].name,
             f"setsid sh -c 'sleep {duration} & sleep {duration}' </dev/null >/dev/null 2>&1 &"],
            check=True,
            timeout=30,
        )  # fmt: skip
        theirs = until_sync(lambda: len(_sleeps(duration)) >= 2 and _sleeps(duration), "sleeps")
        assert set(theirs) <= set(sandbox_processes(sb.root))
        # Not the sandbox's: no mark, and the mark of a sandbox elsewhere.
        env = {k: v for k, v in os.environ.items() if k != "HPCBATCH_SANDBOX_ROOT"}
        plain = subprocess.Popen(["sleep", duration], env=env, start_new_session=True)
        other = subprocess.Popen(
            ["sleep", duration],
            env={**env, "HPCBATCH_SANDBOX_ROOT": f"{sb.root}-other"},
            start_new_session=True,
        )
        try:
            sandbox_down(sb.root)
            for pid in theirs:
                assert not alive(pid), f"{pid} ({cmdline(pid)!r}) outlived sandbox down"
            assert plain.poll() is None and other.poll() is None
            assert sandbox_processes(sb.root) == {}
        finally:
            for proc in (plain, other):
                proc.kill()
                proc.wait()


def _sleeps(duration: str) -> list[int]:
    """Live `sleep DURATION` processes."""
    want = b"sleep\0" + duration.encode() + b"\0"
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and cmdline(int(p)) == want]


def until_sync(predicate: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


def holders(marker: str) -> dict[int, str]:
    """pid -> host of the job's holder processes (core.gang.HOLDER_SCRIPT's sleep)."""
    return {
        pid: host
        for pid, host in job_processes(marker).items()
        if cmdline(pid) == b"sleep\x002147483647\x00"
    }


async def test_holder_is_stopped_when_its_host_returns_after_the_job_ended(
    sandbox: Sandbox, controller_factory: Any
) -> None:
    """The main node ends while the controller is down; the controller comes back
    while the holder's host is unreachable and ends the job (the main node's exit,
    or the host lost), with no way to stop the holder then; when that host
    returns, its holder is stopped (fenced) all the same."""
    c1, api = await controller_factory()
    home = c1.settings.home
    marker = uuid.uuid4().hex
    job_id = await api.submit(
        script="#!/bin/sh\nsleep 3\n", nodes=2, env={"TEST_MARK": marker}, name="holder-test"
    )
    job = c1.jobs.live(job_id)
    await until(lambda: job.state == "RUNNING", what="running")
    hosts = {a.node: a.host for a in job.attempts}
    victim = hosts[1]
    await until(lambda: set(holders(marker).values()) == {victim}, what="the holder")
    (holder,) = holders(marker)
    await c1.stop()
    stop_host(sandbox, victim)  # refuses new connections: the controller cannot reach it
    try:
        # The main node's script ends while no controller runs.
        await until(
            lambda: not any(h == hosts[0] for h in job_processes(marker).values()),
            timeout=30,
            what="the main node's end",
        )
        c2, api2 = await controller_factory(home=home, up=len(sandbox.hosts) - 1)
        (final,) = await api2.wait(job_id, timeout=60)
        # SUCCEEDED if the main node's exit is collected first, FAILED ("host node2
        # lost") if the unreachable host is: either way the job is over.
        assert final["state"] in ("SUCCEEDED", "FAILED"), final
        assert alive(holder)  # its host is out of reach: nothing could stop it yet
    finally:
        start_host(sandbox, victim)
    await until(lambda: c2.cluster.hosts[victim].state == "UP", timeout=60, what="host back")
    await until(lambda: not alive(holder), timeout=30, what="the holder stopped")
    assert not job_processes(marker)
