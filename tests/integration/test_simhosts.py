"""Simulated hosts (hpcbatch.transport.sim) against the unchanged controller.

The essentials of benchmarks/scale.py at a size that runs in seconds: 50
asyncssh hosts in another process, host keys checked, 500 array children all
SUCCEEDED; plus what makes the simulation honest: the controller refuses a
host whose key is not in known_hosts, a black-holed host is detected by the
link's keepalives, and an exit that happens while a host is cut off is
collected by reconciliation when it comes back, as with a real agent's disk.
No sshd needed.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from hpcbatch.controller.app import Controller
from hpcbatch.transport.link import HostLink, LinkSettings, SshTarget
from hpcbatch.transport.sim.cluster import SimCluster
from tests.integration.conftest import Api, until
from tests.integration.conftest import test_settings as controller_settings


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hb-sim-"))  # short: the controller's socket is here
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sim(workdir: Path) -> Iterator[SimCluster]:
    with SimCluster(workdir / "sim", 50, procs=2) as cluster:
        yield cluster


@pytest.fixture
async def controller(sim: SimCluster, workdir: Path) -> AsyncIterator[tuple[Controller, Api]]:
    c = await Controller.create(controller_settings(sim.inventory, workdir / "home"))
    await c.start()
    try:
        await until(
            lambda: sum(h.state == "UP" for h in c.cluster.hosts.values()) == sim.n,
            timeout=60,
            what="every sim host UP",
        )
        yield c, Api(c.settings.socket)
    finally:
        await c.stop()


def job_states(c: Controller) -> dict[str, int]:
    db = sqlite3.connect(f"file:{c.settings.database}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT state, count(*) FROM jobs WHERE array_parent IS NOT NULL GROUP BY state"
        ).fetchall()
    finally:
        db.close()
    return {str(s): int(n) for s, n in rows}


async def test_fifty_hosts_run_five_hundred_jobs(controller: tuple[Controller, Api]) -> None:
    c, api = controller
    stats = await api("stats")
    assert stats["hosts"] == {"UP": 50} and stats["links_connected"] == 50
    parent = await api.submit(script="#!/bin/sh\nsleep 0.2\n", array="0-499")
    (final,) = await api.wait(parent, timeout=60)
    assert final["state"] == "SUCCEEDED"
    assert job_states(c) == {"SUCCEEDED": 500}
    hosts = {h.name for h in c.cluster.hosts.values() if h.facts and h.facts.hostname}
    assert len(hosts) == 50
    stats = await api("stats")
    assert stats["jobs"] == {} and stats["scheduler"]["passes"] >= 1


async def test_exit_code_time_limit_and_cancel(controller: tuple[Controller, Api]) -> None:
    c, api = controller
    failed = await api.submit(script="#!/bin/sh\nsleep 0.1\nexit 3\n")
    timed = await api.submit(script="#!/bin/sh\nsleep 30\n", time_limit_s=1)
    cancelled = await api.submit(script="#!/bin/sh\nsleep 30\n")
    await until(lambda: c.jobs.live(cancelled).state == "RUNNING", what="RUNNING")
    await api("cancel", job_ids=[cancelled])
    by_id = {j["id"]: j for j in await api.wait(failed, timed, cancelled, timeout=30)}
    assert by_id[failed]["state"] == "FAILED" and by_id[failed]["exit_code"] == 3
    assert by_id[timed]["state"] == "FAILED" and "time limit" in (by_id[timed]["reason"] or "")
    # AWS Batch's TerminateJob: a running job ends FAILED, with the reason the kill gave.
    assert by_id[cancelled]["state"] == "FAILED"
    assert "terminated by" in (by_id[cancelled]["reason"] or "")


async def test_exit_while_cut_off_is_collected_on_return(
    controller: tuple[Controller, Api], sim: SimCluster
) -> None:
    c, api = controller
    job = await api.submit(script="#!/bin/sh\nsleep 1\n")
    await until(lambda: c.jobs.live(job).state == "RUNNING", what="RUNNING")
    host = c.jobs.live(job).attempts[0].host
    sim.blackhole([host])
    await c.pool[host].drop()  # as if the network cut the connection
    await until(lambda: c.cluster.hosts[host].state != "UP", what=f"{host} down")
    await asyncio.sleep(1.2)  # the job ends while nobody listens
    assert c.jobs.live(job).state == "RUNNING"
    sim.restore([host])
    c.pool[host].kick()
    (final,) = await api.wait(job, timeout=30)
    assert final["state"] == "SUCCEEDED"
    await until(lambda: c.cluster.hosts[host].state == "UP", what=f"{host} back UP")


class Listener:
    def __init__(self) -> None:
        self.up: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.down: asyncio.Queue[str] = asyncio.Queue()

    async def link_up(self, link: HostLink, hello: dict[str, Any]) -> None:
        await self.up.put(hello)

    async def link_down(self, link: HostLink, reason: str) -> None:
        await self.down.put(reason)

    def agent_event(self, link: HostLink, event: dict[str, Any]) -> None:
        pass


def target(sim: SimCluster, known_hosts: Path) -> SshTarget:
    h = sim.hosts[0]
    return SshTarget(
        name=h["name"], address=h["address"], port=h["port"], user=None,
        identity=str(sim.client_key), known_hosts=str(known_hosts), ssh_config=None,
        work_dir=str(sim.work_dir),
    )  # fmt: skip


async def test_host_key_checked_and_black_hole_detected(sim: SimCluster, workdir: Path) -> None:
    wrong = workdir / "wrong_known_hosts"
    h = sim.hosts[0]
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    wrong.write_text(f"[{h['address']}]:{h['port']} {other}")
    listener = Listener()
    fast = LinkSettings(keepalive_s=0.2, keepalive_count=2, backoff_min_s=0.1, heartbeat_s=0)
    link = HostLink(target(sim, wrong), listener, settings=fast)
    link.start()
    try:
        reason = await asyncio.wait_for(listener.down.get(), 30)
        assert "not trusted" in reason
        assert listener.up.empty()
        # The right key, in a rewritten file: the cached parse is replaced.
        wrong.write_text(sim.known_hosts.read_text())
        link.kick()
        hello = await asyncio.wait_for(listener.up.get(), 30)
        assert hello["facts"]["hostname"] == h["name"]
        sim.blackhole([h["name"]])
        reason = await asyncio.wait_for(listener.down.get(), 10)
        assert "keepalive" in reason or "lost" in reason
    finally:
        sim.restore([h["name"]])
        await link.close()
