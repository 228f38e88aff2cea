"""Host failures on the real sandbox: cut-off hosts, DOWN and fencing, drain, health checks.

Faults are real: a TCP proxy in front of a host's sshd that stalls (black
hole) or resets connections, or the host's sshd process tree stopped with
SIGSTOP. Jobs are pinned to one host by draining the others.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.controller.app import Controller
from hpcbatch.sandbox import Sandbox, start_host, stop_host
from tests.integration.conftest import Api, until
from tests.integration.faults import FaultProxy, pid_alive, proxied_inventory, signal_sshd

pytestmark = pytest.mark.sshd

VICTIM = "node2"


@pytest.fixture
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hb-fault-") as d:
        path = Path(d)
        path.chmod(0o777)  # jobs run as the sandbox login, which may not be us
        yield path


@pytest.fixture
def proxy(sandbox: Sandbox) -> Iterator[FaultProxy]:
    host = sandbox.host(VICTIM)
    with FaultProxy((host.address, host.port)) as p:
        yield p


async def only_on(c: Controller, api: Api, name: str) -> None:
    for other in c.cluster.hosts:
        await api("drain" if other != name else "resume", host=other, reason="test: pinned")


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


async def wait_pid(path: Path, timeout: float = 30) -> int:
    pid: int = await until(lambda: read_pid(path), timeout, f"pid in {path}")
    return pid


@pytest.mark.parametrize("cut", ["blackhole", "sigstop"])
async def test_timeout_on_a_cut_off_host(
    sandbox: Sandbox, controller_factory: Any, proxy: FaultProxy, scratch: Path, cut: str
) -> None:
    """The host agent's shepherd enforces the limit on its own: no controller needed."""
    inventory = proxied_inventory(sandbox, {VICTIM: proxy.port}, scratch)
    c, api = await controller_factory(inventory=inventory)
    await only_on(c, api, VICTIM)
    pid_file = scratch / "pid"
    job_id = await api.submit(script=f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n",
                              time_limit_s=3)  # fmt: skip
    pid = await wait_pid(pid_file)
    # The job runs before the launch's reply is read: cut only once the controller knows.
    await until(lambda: c.jobs.live(job_id).state == "RUNNING", what="RUNNING")
    started = time.monotonic()
    stopped: list[int] = []
    if cut == "blackhole":
        proxy.blackhole()
    else:
        stopped = signal_sshd(sandbox, VICTIM, signal.SIGSTOP)
    try:
        # The limit is 3 s, the grace 2 s: gone well before the controller gives up.
        await until(lambda: not pid_alive(pid), timeout=15, what="the job killed on time")
        took = time.monotonic() - started
        assert c.cluster.hosts[VICTIM].state != "DOWN"
        assert c.jobs.live(job_id).state == "RUNNING"  # the controller has not heard yet
    finally:
        proxy.restore()
        if stopped:
            signal_sshd(sandbox, VICTIM, signal.SIGCONT)
    (job,) = await api.wait(job_id, timeout=60)
    assert job["state"] == "FAILED" and job["reason"].startswith("timeout"), job
    print(f"killed {took:.1f} s after the cut (limit 3 s)")


async def test_down_host_fails_over_and_is_fenced_when_back(
    sandbox: Sandbox, controller_factory: Any, proxy: FaultProxy, scratch: Path
) -> None:
    inventory = proxied_inventory(sandbox, {VICTIM: proxy.port}, scratch)
    c, api = await controller_factory(inventory=inventory, down_after_s=3, link_timeout_s=2)
    await only_on(c, api, VICTIM)
    script = (
        "#!/bin/sh\n"
        f"echo $$ > {scratch}/pid.$HPCBATCH_ATTEMPT\n"
        f"echo $HPCBATCH_JOB_ID $HPCBATCH_ATTEMPT $(hostname) >> {scratch}/ran\n"
        "echo attempt $HPCBATCH_ATTEMPT\n"
        'if [ "$HPCBATCH_ATTEMPT" = 1 ]; then exec sleep 120; fi\n'
    )
    job_id = await api.submit(script=script, retry={"attempts": 2})
    stale = await wait_pid(scratch / "pid.1")
    proxy.blackhole()
    for other in c.cluster.hosts:
        if other != VICTIM:
            await api("resume", host=other)
    try:
        (job,) = await api.wait(job_id, timeout=60)
        assert job["state"] == "SUCCEEDED", job
        assert c.cluster.hosts[VICTIM].state == "DOWN"
        shown = await api("show", job_id=job_id)
        first, second = shown["attempts"]
        assert (first["host"], first["state"]) == (VICTIM, "LOST")
        assert first["reason"].startswith(f"host {VICTIM} lost: no heartbeat for "), first
        assert second["host"] != VICTIM and second["exit_code"] == 0
        assert pid_alive(stale), "the stale attempt runs on while its host is cut off"
    finally:
        proxy.restore()
    # Back: reconcile kills the stale attempt before the host takes new work.
    await until(lambda: c.cluster.hosts[VICTIM].state == "UP", timeout=60, what="victim back")
    await until(lambda: not pid_alive(stale), timeout=15, what="stale attempt fenced")
    out = await api("logs", job_id=job_id, attempt=1)
    assert out["data"] == "attempt 1\n"  # its output is kept
    assert len((scratch / "ran").read_text().splitlines()) == 2


async def test_reset_connections_lose_nothing(
    sandbox: Sandbox, controller_factory: Any, proxy: FaultProxy, scratch: Path
) -> None:
    inventory = proxied_inventory(sandbox, {VICTIM: proxy.port}, scratch)
    c, api = await controller_factory(inventory=inventory)
    await only_on(c, api, VICTIM)
    job_id = await api.submit(script=f"#!/bin/sh\necho $$ > {scratch}/pid\nsleep 2\necho done\n")
    await wait_pid(scratch / "pid")
    proxy.reset()
    await until(lambda: c.cluster.hosts[VICTIM].state == "UNREACHABLE", what="cut off")
    await asyncio.sleep(2.5)  # the job ends while its host is unreachable
    proxy.restore()
    (job,) = await api.wait(job_id, timeout=60)
    assert job["state"] == "SUCCEEDED", job
    assert await api.logs(job_id) == "done\n"


async def test_operator_down_fails_over_and_resume(
    sandbox: Sandbox, controller_factory: Any, scratch: Path
) -> None:
    c, api = await controller_factory()
    await only_on(c, api, VICTIM)
    script = (
        f"#!/bin/sh\necho $$ > {scratch}/pid.$HPCBATCH_ATTEMPT\n"
        'if [ "$HPCBATCH_ATTEMPT" = 1 ]; then exec sleep 120; fi\n'
    )
    job_id = await api.submit(script=script, retry={"attempts": 2})
    first = await wait_pid(scratch / "pid.1")
    for other in c.cluster.hosts:
        if other != VICTIM:
            await api("resume", host=other)
    summary = await api("down", host=VICTIM, reason="bad DIMM")
    assert summary["admin"] == "DOWN"
    (job,) = await api.wait(job_id, timeout=60)
    assert job["state"] == "SUCCEEDED", job
    a1, a2 = (await api("show", job_id=job_id))["attempts"]
    assert a1["state"] == "LOST" and a1["reason"] == f"host {VICTIM} set DOWN: bad DIMM"
    assert a2["host"] != VICTIM
    await until(lambda: not pid_alive(first), timeout=15, what="killed on the down host")
    # Nothing new starts there until resume.
    jobs = [await api.submit() for _ in range(6)]
    for j in await api.wait(*jobs):
        assert j["hosts"] != [VICTIM]
    await api("resume", host=VICTIM)
    await only_on(c, api, VICTIM)
    (j,) = await api.wait(await api.submit(), timeout=30)
    assert j["state"] == "SUCCEEDED" and j["hosts"] == [VICTIM]


def _with_health_check(sb: Sandbox, directory: Path, command: str, extra: str = "") -> Path:
    text = sb.inventory.read_text()
    block = '[[compute_environments]]\nname = "cpu"\n'
    assert block in text
    text = text.replace(
        block,
        block + f"health_check = {command!r}\nhealth_check_interval_s = 1\n"
        "health_check_timeout_s = 5\n",
    )
    path = directory / "inventory.toml"
    path.write_text(text + extra)
    return path


async def test_health_check_drains_and_resumes(
    sandbox: Sandbox, controller_factory: Any, scratch: Path
) -> None:
    # Every sandbox host has this machine's hostname: the marker makes them all sick.
    sick = scratch / f"sick-{socket.gethostname().split('.')[0]}"
    sick.write_text("")
    inventory = _with_health_check(
        sandbox,
        scratch,
        f'test ! -e {scratch}/sick-$(hostname -s) || {{ echo "disk full"; exit 3; }}',
    )
    c, api = await controller_factory(inventory=inventory)
    hosts = {h["name"]: h for h in await api("hosts")}
    for h in hosts.values():  # checked on connect, before taking work
        assert h["admin"] == "DRAIN", h
        assert h["admin_reason"].startswith("health check failed: "), h
        assert h["admin_reason"].endswith("exit code 3: disk full"), h
    sick.unlink()
    await until(
        lambda: all(h.admin == "ACTIVE" for h in c.cluster.hosts.values()),
        timeout=30,
        what="resumed by a passing check",
    )
    (j,) = await api.wait(await api.submit(), timeout=30)
    assert j["state"] == "SUCCEEDED"


async def test_operator_drain_is_not_undone_by_a_passing_check(
    sandbox: Sandbox, controller_factory: Any, scratch: Path
) -> None:
    c, api = await controller_factory(inventory=_with_health_check(sandbox, scratch, "true"))
    await api("drain", host=VICTIM, reason="maintenance")
    monitor = c.monitor
    assert await monitor.check(c.cluster.hosts[VICTIM]) is True
    assert (c.cluster.hosts[VICTIM].admin, c.cluster.hosts[VICTIM].admin_reason) == (
        "DRAIN",
        "maintenance",
    )


async def test_resources_below_declared_drain(
    sandbox: Sandbox, controller_factory: Any, scratch: Path
) -> None:
    text = sandbox.inventory.read_text()
    block = f'name = "{VICTIM}"\n'
    text = text.replace(block, block + "cpus = 4096\n")
    inventory = scratch / "inventory.toml"
    inventory.write_text(text)
    _c, api = await controller_factory(inventory=inventory)
    host = {h["name"]: h for h in await api("hosts")}[VICTIM]
    assert host["admin"] == "DRAIN"
    assert host["admin_reason"].startswith("resources below declared: 4096 CPUs declared, "), host


async def test_a_time_limit_raised_while_the_host_was_away_reaches_it_when_it_returns(
    sandbox: Sandbox, controller_factory: Any
) -> None:
    """`update --time` of a running job whose host cannot be told: sent when the host
    reconnects, so a 6 s job raised to 30 s while cut off still runs its 10 s."""
    c, api = await controller_factory()
    job_id = await api.submit(script="#!/bin/sh\nsleep 10\n", time_limit_s=6, nodelist=VICTIM)
    job = await until(lambda: (j := c.jobs.live(job_id)) and j.state == "RUNNING" and j)
    stop_host(sandbox, VICTIM)  # refuses new connections: the link cannot come back
    try:
        await c.pool[VICTIM].drop("test: cut off")
        await until(lambda: c.cluster.hosts[VICTIM].state != "UP", what="host cut off")
        out = await api("update", job_id=job_id, changes={"time_limit_s": 30})
        assert f"not reached on {VICTIM}" in out["result"], out
    finally:
        start_host(sandbox, VICTIM)
    await until(lambda: c.cluster.hosts[VICTIM].state == "UP", timeout=30, what="host back")
    (done,) = await api.wait(job_id, timeout=40)
    assert done["state"] == "SUCCEEDED", done
    assert done["ended"] - job.started > 9, done
