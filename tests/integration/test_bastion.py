"""A host reached only through a bastion (`ProxyJump` in the inventory's ssh_config).

The target is a second, one-host sandbox (its own sshd, host key and client
key) on its own loopback address. An iptables rule lets only the sandbox's
login user open TCP connections to it: the sshd of the jump host (the main
sandbox's node1) forwards as that user, while the controller (root) is
refused, as a site's firewall refuses everything but the bastion. The
controller reaches the target with the ssh_config's `ProxyJump` and runs a job
there; the same target without the jump stays unreachable. Root only (the
iptables rule): as another user this test skips.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.sandbox import SANDBOX_USER, Sandbox, temporary_sandbox
from tests.integration.conftest import job_where, until

pytestmark = pytest.mark.sshd

BASE_ADDRESS = 40  # 127.0.0.40: apart from the main sandbox's addresses


@pytest.fixture(scope="module")
def hidden() -> Iterator[Sandbox]:
    """A one-host sandbox that only the sandbox's login user may connect to."""
    if os.geteuid() != 0:
        pytest.skip("needs root: an iptables rule makes the target reachable only via the jump")
    if shutil.which("iptables") is None:
        pytest.fail("iptables is missing: scripts/install-prereqs.sh installs it")
    with temporary_sandbox(hosts=1, gpu_hosts=0, base_address=BASE_ADDRESS) as sb:
        host = sb.hosts[0]
        rule = [
            "OUTPUT", "-p", "tcp", "-d", host.address, "--dport", str(host.port),
            "-m", "owner", "!", "--uid-owner", SANDBOX_USER,
            "-j", "REJECT", "--reject-with", "tcp-reset",
        ]  # fmt: skip
        subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)
        try:
            yield sb
        finally:
            subprocess.run(["iptables", "-D", *rule], check=True, capture_output=True)


def _files(sandbox: Sandbox, hidden: Sandbox, where: Path) -> Path:
    """ssh_config, known_hosts and inventory: node1 of the sandbox, and the hidden host
    twice, as `behind` (through node1) and as `direct` (its address, no jump)."""
    target = hidden.hosts[0]
    key = " ".join(Path(f"{target.host_key}.pub").read_text().split()[:2])
    known = where / "known_hosts"
    names = ["behind", target.address]
    if target.port != 22:
        names = [f"[{n}]:{target.port}" for n in names]
    known.write_text(sandbox.known_hosts.read_text() + f"{','.join(names)} {key}\n")
    config = where / "ssh_config"
    config.write_text(
        f"Host behind\n    HostName {target.address}\n    ProxyJump node1\n\n"
        + sandbox.ssh_config.read_text()
    )
    node1 = sandbox.host("node1")
    inventory = where / "inventory.toml"
    inventory.write_text(
        f"""default_queue = "behind"

[defaults]
user = "{sandbox.user}"
known_hosts = "{known}"
ssh_config = "{config}"

[[hosts]]
name = "node1"
address = "{node1.address}"
port = {node1.port}
identity = "{sandbox.client_key}"
work_dir = "{node1.work_dir}"

[[hosts]]
name = "behind"
port = {target.port}
identity = "{hidden.client_key}"
work_dir = "{target.work_dir}"

[[hosts]]
name = "direct"
address = "{target.address}"
port = {target.port}
identity = "{hidden.client_key}"
work_dir = "{target.work_dir}"

[[compute_environments]]
name = "jumped"
hosts = ["behind"]

[[compute_environments]]
name = "plain"
hosts = ["direct"]

[[queues]]
name = "behind"
compute_environments = ["jumped"]

[[queues]]
name = "direct"
compute_environments = ["plain"]
"""
    )
    return inventory


async def test_host_behind_a_jump_host_runs_jobs(
    sandbox: Sandbox, hidden: Sandbox, controller_factory: Any, tmp_path: Path
) -> None:
    target = hidden.hosts[0]
    # The firewall is real: a direct ssh to the target is refused, through node1 it works.
    direct = await asyncio.to_thread(
        subprocess.run, hidden.ssh_argv("node1", "true"), capture_output=True, text=True
    )
    assert direct.returncode == 255 and "Connection refused" in direct.stderr, direct
    inventory = _files(sandbox, hidden, tmp_path)
    c, api = await controller_factory(inventory=inventory, up=2)
    assert c.cluster.hosts["behind"].state == "UP"
    job = await api.submit(script="#!/bin/sh\necho $SSH_CONNECTION\necho $HPCBATCH_SANDBOX_HOST\n")
    (done,) = await api.wait(job)
    assert done["state"] == "SUCCEEDED" and done["hosts"] == ["behind"], done
    connection, name = (await api.logs(job)).split("\n")[:2]
    # The agent's sshd is the target's (address and port), and it runs on the hidden
    # sandbox's host (its own work directory held the attempt).
    assert connection.split()[2:] == [target.address, str(target.port)], connection
    assert name == target.name
    assert any((target.work_dir).glob(f"*/*/attempts/{job}.1.0"))
    # Without the jump, the same sshd is out of reach: the host never comes up.
    plain = c.cluster.hosts["direct"]
    await until(lambda: plain.reason, what="direct refused")
    assert plain.state == "UNREACHABLE", plain.state
    assert plain.reason.startswith(
        f"cannot reach {hidden.user}@{target.address}:{target.port}: [Errno 111]"
    ), plain.reason
    waiting = await api.submit(queue="direct")
    await job_where(api, waiting, lambda j: j["state"] == "RUNNABLE" and j["reason"])
    await api("cancel", job_ids=[waiting])
