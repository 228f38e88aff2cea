"""HostPool: one answer, HostUnavailable, for a host that cannot be reached now."""

from __future__ import annotations

from typing import Any

import pytest

from hpcbatch.transport.link import HostLink, LinkSettings, SshTarget
from hpcbatch.transport.pool import HostPool, HostUnavailable


class Quiet:
    async def link_up(self, link: HostLink, hello: dict[str, Any]) -> None:
        pass

    async def link_down(self, link: HostLink, reason: str) -> None:
        pass

    def agent_event(self, link: HostLink, event: dict[str, Any]) -> None:
        pass


def target(name: str) -> SshTarget:
    return SshTarget(
        name=name, address="127.0.0.1", port=1, user=None, identity=None, known_hosts=None,
        ssh_config=None, work_dir="/tmp",
    )  # fmt: skip


async def test_request_and_post_raise_host_unavailable_when_not_connected() -> None:
    pool = HostPool(LinkSettings(max_connecting=2))
    a = pool.add(target("a"), Quiet())
    b = pool.add(target("b"), Quiet())
    assert list(pool) == ["a", "b"] and len(pool) == 2 and "a" in pool and "c" not in pool
    assert pool["a"] is a and dict(pool.items()) == {"a": a, "b": b}
    # The links share the pool's archive, gate and known_hosts cache.
    assert a._source is b._source and a._gate is b._gate and a._known_hosts is b._known_hosts
    a.last_error = "cannot reach 127.0.0.1:1: refused"
    with pytest.raises(HostUnavailable, match=r"^host a is not connected: cannot reach"):
        await pool.request("a", "kill", attempt="1.1.0")
    with pytest.raises(HostUnavailable, match=r"^host c is not connected"):
        await pool.request("c", "ack", attempts=[])
    with pytest.raises(HostUnavailable, match=r"^host b is not connected: None"):
        pool.post("b", "rkill", key="x")
    assert not pool.connected("a") and not pool.connected("c") and pool.connected_count() == 0
    await pool.close()
