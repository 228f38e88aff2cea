"""Elastic compute environments on the sandbox (docs/elastic.md).

The resume and suspend commands really start and stop the sandbox hosts' sshd
(`hpcbatch sandbox host-up|host-down`). node2 and node3 (2 CPUs each) form an
elastic environment with min_vcpus 0; node1 stays static.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.controller.app import Controller
from hpcbatch.core.states import HostState
from hpcbatch.sandbox import Sandbox, sandbox_status, start_host
from tests.integration.conftest import inventory_with, job_where, short_home, until

pytestmark = pytest.mark.sshd

ELASTIC = ("node2", "node3")


def tail(resume: str, suspend: str, **extra: object) -> str:
    lines = "".join(f"{k} = {v}\n" for k, v in extra.items())
    return f"""
[[compute_environments]]
name = "static"
hosts = ["node1"]

[[compute_environments]]
name = "cloud"
hosts = ["node2", "node3"]
min_vcpus = 0
idle_time_s = 2
resume_command = "{resume}"
suspend_command = "{suspend}"
{lines}
[[queues]]
name = "cloud"
compute_environments = ["cloud"]

[[queues]]
name = "batch"
compute_environments = ["static"]
"""


def sandbox_cmd(sandbox: Sandbox, action: str) -> str:
    return f"{sys.executable} -m hpcbatch.cli.main sandbox --root {sandbox.root} {action}"


def sshd_running(sandbox: Sandbox, name: str) -> bool:
    sb = sandbox_status(sandbox.root)
    assert sb is not None
    return sb.host(name).pid is not None


@pytest.fixture
def restore_hosts(sandbox: Sandbox) -> Iterator[None]:
    """Other tests share the sandbox: its elastic hosts are started again after."""
    yield
    sb = sandbox_status(sandbox.root)
    assert sb is not None
    for name in ELASTIC:
        start_host(sb, name)


def state(c: Controller, name: str) -> HostState:
    return c.cluster.hosts[name].state


async def test_scale_from_zero_within_max_and_back_to_zero(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path, restore_hosts: None
) -> None:
    text = tail(sandbox_cmd(sandbox, "host-up"), sandbox_cmd(sandbox, "host-down"), max_vcpus=2)
    inv = inventory_with(sandbox, tmp_path, text, host_extra="cpus = 2", default_queue="cloud")
    c, api = await controller_factory(inventory=inv, up=2)  # node1 and node4 (static)
    for name in ELASTIC:
        await until(
            lambda n=name: state(c, n) == HostState.POWERED_DOWN,
            what=f"{name} down: {[(h.name, h.state, h.reason) for h in c.cluster.hosts.values()]}",
        )
        assert not sshd_running(sandbox, name)
    # A burst of 4 one-CPU jobs: max_vcpus 2 allows one 2-CPU host at a time.
    seen_on: set[str] = set()
    watching = True

    async def watch() -> None:
        while watching:
            on = {n for n in ELASTIC if state(c, n) not in (HostState.POWERED_DOWN, HostState.DOWN)}
            assert len(on) <= 1, f"max_vcpus exceeded: {on}"
            seen_on.update(on)
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    jobs = [await api.submit(queue="cloud", script="#!/bin/sh\nsleep 1\n") for _ in range(4)]
    first = await job_where(
        api, jobs[0], lambda j: (j["reason"] or "").startswith("Resources: powering up")
    )
    assert first["reason"].startswith("Resources: powering up node2 (since "), first
    done = await api.wait(*jobs, timeout=90)
    watching = False
    await watcher
    assert {j["state"] for j in done} == {"SUCCEEDED"}, done
    assert {h for j in done for h in j["hosts"]} == {"node2"}
    assert seen_on == {"node2"}
    # Idle for idle_time_s (2 s): suspended, its sshd stopped; node3 never came up.
    await until(lambda: state(c, "node2") == HostState.POWERED_DOWN, timeout=20, what="suspend")
    assert not sshd_running(sandbox, "node2")
    assert not sshd_running(sandbox, "node3")


async def test_a_failed_resume_marks_the_host_down_and_the_job_runs_elsewhere(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path, restore_hosts: None
) -> None:
    script = tmp_path / "resume.sh"
    script.write_text(
        "#!/bin/sh\n"
        'for h in "$@"; do\n'
        '  if [ "$h" = node2 ]; then echo "node2: no capacity in zone a"; continue; fi\n'
        f'  {sandbox_cmd(sandbox, "host-up")} "$h"\n'
        "done\n"
    )
    script.chmod(0o755)
    text = tail(str(script), sandbox_cmd(sandbox, "host-down"), resume_timeout_s=3)
    inv = inventory_with(sandbox, tmp_path, text, host_extra="cpus = 2", default_queue="cloud")
    inv.write_text(inv.read_text().replace('name = "node3"\n', 'name = "node3"\nweight = 5\n'))
    c, api = await controller_factory(inventory=inv, up=2)
    await until(lambda: state(c, "node3") == HostState.POWERED_DOWN, what="node3 down")
    job = await api.submit(queue="cloud", cpus=2, script="#!/bin/sh\ntrue\n")
    # node2 is the cheaper: resumed first, never answers, DOWN after 3 s with the output.
    ran = await job_where(api, job, lambda j: j["state"] == "SUCCEEDED", timeout=60)
    assert ran["hosts"] == ["node3"]
    assert state(c, "node2") == HostState.DOWN
    reason = c.cluster.hosts["node2"].reason or ""
    assert reason.startswith("resume timed out after 3 s: node2: no capacity in zone a"), reason


async def test_a_restart_keeps_powered_down_hosts_down(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path, restore_hosts: None
) -> None:
    """The power states are in the store: a restarted controller runs no command for
    hosts it had powered down (no resume, no second suspend), and they stay down."""
    log = tmp_path / "power.log"
    for action in ("host-up", "host-down"):
        script = tmp_path / f"{action}.sh"
        script.write_text(
            f'#!/bin/sh\necho "{action} $*" >> {log}\n{sandbox_cmd(sandbox, action)} "$@"\n'
        )
        script.chmod(0o755)
    text = tail(str(tmp_path / "host-up.sh"), str(tmp_path / "host-down.sh"))
    inv = inventory_with(sandbox, tmp_path, text, host_extra="cpus = 2", default_queue="cloud")
    home = short_home()
    c, _api = await controller_factory(inventory=inv, up=2, home=home)
    for name in ELASTIC:
        await until(lambda n=name: state(c, n) == HostState.POWERED_DOWN, what=f"{name} down")
    await until(lambda: c.power._work == set(), what="power state written")
    await c.stop()
    before = log.read_text()
    assert before == "host-down node2 node3\n", before
    c2, api2 = await controller_factory(inventory=inv, up=2, home=home)
    assert all(state(c2, n) == HostState.POWERED_DOWN for n in ELASTIC)
    await asyncio.sleep(1.0)  # a few power ticks: nothing is resumed or suspended
    assert all(state(c2, n) == HostState.POWERED_DOWN for n in ELASTIC)
    assert log.read_text() == before
    # Work still powers one up, as before the restart.
    job = await api2.submit(queue="cloud", script="#!/bin/sh\ntrue\n")
    ran = await job_where(api2, job, lambda j: j["state"] == "SUCCEEDED", timeout=60)
    assert ran["hosts"] == ["node2"]
    assert "host-up node2" in log.read_text()
