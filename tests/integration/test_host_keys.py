"""Host-key checking is always on: an ssh_config cannot turn it off (real sshd hosts).

Without a known_hosts file in the inventory, the ssh_config names the file the
host's key is checked against; `UserKnownHostsFile none` there (with
`StrictHostKeyChecking no`, as copied from many a how-to) would make asyncssh
accept any key. hpcbatch refuses such a host before it connects, with the
reason. Each test also connects through the same config with a known_hosts
file named in it, so the refusal is the policy, not a broken config.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.sandbox import Sandbox
from hpcbatch.transport.link import HostLink, LinkSettings, SshTarget

FAST = LinkSettings(backoff_min_s=0.1, backoff_max_s=0.2, heartbeat_s=0)


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


def ssh_config(sb: Sandbox, known_hosts: str) -> str:
    """node1 in the ssh_config's own words: address, port, user, key, known_hosts."""
    node1 = sb.host("node1")
    return (
        "Host node1\n"
        f"    HostName {node1.address}\n"
        f"    Port {node1.port}\n"
        f"    User {sb.user}\n"
        f"    IdentityFile {sb.client_key}\n"
        f"    UserKnownHostsFile {known_hosts}\n"
        "    StrictHostKeyChecking no\n"
    )


def target(sb: Sandbox, config: Path | None) -> SshTarget:
    return SshTarget(
        name="node1", address=None, port=None, user=None, identity=None, known_hosts=None,
        ssh_config=str(config) if config else None, work_dir=str(sb.host("node1").work_dir),
        namespace="host-keys",
    )  # fmt: skip


async def first_outcome(link: HostLink, listener: Listener) -> tuple[str, Any]:
    link.start()
    up = asyncio.create_task(listener.up.get())
    down = asyncio.create_task(listener.down.get())
    try:
        done, _ = await asyncio.wait({up, down}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    finally:
        up.cancel()
        down.cancel()
    assert done, "the link neither came up nor went down"
    return ("up", up.result()) if up in done else ("down", down.result())


async def test_ssh_config_cannot_turn_host_key_checking_off(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(ssh_config(sandbox, "none"))
    listener = Listener()
    link = HostLink(target(sandbox, config), listener, settings=FAST)
    try:
        kind, reason = await first_outcome(link, listener)
        assert kind == "down" and not link.connected
        assert "host key of node1" in reason and "cannot be checked" in reason
        assert str(config) in reason and "UserKnownHostsFile none" in reason
        assert "refused" in reason
        # Whatever the retries: it never comes up.
        await asyncio.wait_for(listener.down.get(), 10)
        assert listener.up.empty()
    finally:
        await link.close()
    # The same config with the sandbox's known_hosts named in it connects.
    config.write_text(ssh_config(sandbox, str(sandbox.known_hosts)))
    listener = Listener()
    link = HostLink(target(sandbox, config), listener, settings=FAST)
    try:
        kind, hello = await first_outcome(link, listener)
        assert kind == "up", hello
    finally:
        await link.close()


async def test_the_users_own_ssh_config_cannot_either(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ssh_config in the inventory: the controller user's ~/.ssh/config is read
    (a home of the test's own here: the real ~/.ssh is never touched)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    user_config = home / ".ssh" / "config"
    user_config.write_text(ssh_config(sandbox, "none"))
    listener = Listener()
    link = HostLink(target(sandbox, None), listener, settings=FAST)
    try:
        kind, reason = await first_outcome(link, listener)
        assert kind == "down" and "cannot be checked" in reason
        assert "~/.ssh/config" in reason and "UserKnownHostsFile none" in reason
    finally:
        await link.close()
    user_config.write_text(ssh_config(sandbox, str(sandbox.known_hosts)))
    listener = Listener()
    link = HostLink(target(sandbox, None), listener, settings=FAST)
    try:
        kind, hello = await first_outcome(link, listener)
        assert kind == "up", hello
    finally:
        await link.close()
