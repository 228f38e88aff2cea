"""The controller's host links as one object: keyed links, the connect gate, known_hosts.

Why it exists: every part of the controller that talks to a host (launch,
kill, ack, logs, health checks, the rsh relay) needs the same three things:
the host's link, whether it is connected, and one answer when it is not.
`HostPool.request(host, op, ...)` and `post(host, op, ...)` give that answer
as one exception, `HostUnavailable`, whether the host has no link, its link
is down, or the connection drops before the reply. What all links share
lives here too, one per pool: the agent archive (built once), the connect
gate and the parsed known_hosts files.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Literal, overload

from hpcbatch.transport.agent.protocol import (
    AckReply,
    ExecReply,
    FenceReply,
    HelloReply,
    ImageReply,
    KillReply,
    LaunchReply,
    PurgeReply,
    ReadReply,
    RetimeReply,
    StdinReply,
)
from hpcbatch.transport.link import (
    AgentError,
    Fencing,
    HostLink,
    HostUnavailable,
    KnownHostsCache,
    LinkListener,
    LinkSettings,
    SshTarget,
    agent_source,
)

__all__ = ["AgentError", "Fencing", "HostPool", "HostUnavailable"]


class HostPool:
    """One link per host, created by `add`, started by `start`, ended by `close`."""

    def __init__(self, settings: LinkSettings | None = None) -> None:
        self.settings = settings or LinkSettings()
        self._links: dict[str, HostLink] = {}
        self._source: bytes | None = None
        # The connect gate: at most `max_connecting` links set up at once.
        #
        # Every link starts at once. Unbounded, a thousand handshakes interleave on
        # one event loop, so each takes as long as all of them together: no host is
        # UP until nearly all are, and past a few thousand they outlast the connect
        # timeout and start over, forever. Through the gate hosts come UP one after
        # another and none waits longer than its own setup. A connection keeps its
        # place for `connect_slot_s` at most, so hosts that are down (whose connects
        # wait out their timeouts, costing no CPU) cannot keep the others waiting.
        self._gate = asyncio.Semaphore(self.settings.max_connecting)
        self._known_hosts = KnownHostsCache()
        # The controller's epoch, which every link sends; set once it takes the lead.
        self.fencing = Fencing()

    # ------------------------------------------------------------------ membership

    def add(self, target: SshTarget, listener: LinkListener) -> HostLink:
        """A link to `target` (not started), sharing the pool's archive, gate and cache."""
        if self._source is None:
            # Built once: per link it cost 6.5 ms each (half a minute at 5,000 hosts).
            self._source = agent_source()
        link = HostLink(
            target,
            listener,
            settings=self.settings,
            source=self._source,
            gate=self._gate,
            known_hosts=self._known_hosts,
            fencing=self.fencing,
        )
        self._links[target.name] = link
        return link

    def start(self) -> None:
        for link in self._links.values():
            link.start()

    async def remove(self, host: str, *, shutdown_agent: bool = False) -> None:
        """Close `host`'s link and forget it (a powered-down host); `add` makes a new one."""
        link = self._links.pop(host, None)
        if link is not None:
            await link.close(shutdown_agent=shutdown_agent)

    def kick(self, host: str) -> None:
        """Try `host`'s connection now instead of waiting out its backoff."""
        link = self._links.get(host)
        if link is not None and not link.connected:
            link.kick()

    async def close(self) -> None:
        """Close every link; jobs keep running on the hosts."""
        await asyncio.gather(*(link.close() for link in self._links.values()))

    def __getitem__(self, host: str) -> HostLink:
        return self._links[host]

    def __contains__(self, host: object) -> bool:
        return host in self._links

    def __len__(self) -> int:
        return len(self._links)

    def __iter__(self) -> Iterator[str]:
        return iter(self._links)

    def items(self) -> Iterator[tuple[str, HostLink]]:
        return iter(self._links.items())

    def connected(self, host: str) -> bool:
        link = self._links.get(host)
        return link is not None and link.connected

    def connected_count(self) -> int:
        return sum(1 for link in self._links.values() if link.connected)

    # ------------------------------------------------------------------ messages

    def _link(self, host: str) -> HostLink:
        link = self._links.get(host)
        if link is None or not link.connected:
            raise HostUnavailable(f"host {host} is not connected: {link and link.last_error}")
        return link

    @overload
    async def request(
        self, host: str, op: Literal["hello"], *, timeout: float | None = ..., **fields: Any
    ) -> HelloReply: ...

    @overload
    async def request(
        self, host: str, op: Literal["launch"], *, timeout: float | None = ..., **fields: Any
    ) -> LaunchReply: ...

    @overload
    async def request(
        self, host: str, op: Literal["image"], *, timeout: float | None = ..., **fields: Any
    ) -> ImageReply: ...

    @overload
    async def request(
        self, host: str, op: Literal["kill"], *, timeout: float | None = ..., **fields: Any
    ) -> KillReply: ...

    @overload
    async def request(
        self, host: str, op: Literal["retime"], *, timeout: float | None = ..., **fields: Any
    ) -> RetimeReply: ...

    @overload
    async def request(
        self, host: str, op: Literal["stdin"], *, timeout: float | None = ..., **fields: Any
    ) -> StdinReply: ...

    @overload
    async def request(
        self, host: str, op: Literal["ack"], *, timeout: float | None = ..., **fields: Any
    ) -> AckReply: ...

    @overload
    async def request(
        self, host: str, op: Literal["read"], *, timeout: float | None = ..., **fields: Any
    ) -> ReadReply: ...

    @overload
    async def request(
        self, host: str, op: Literal["fence"], *, timeout: float | None = ..., **fields: Any
    ) -> FenceReply: ...

    @overload
    async def request(
        self, host: str, op: Literal["exec"], *, timeout: float | None = ..., **fields: Any
    ) -> ExecReply: ...

    @overload
    async def request(
        self, host: str, op: Literal["purge"], *, timeout: float | None = ..., **fields: Any
    ) -> PurgeReply: ...

    async def request(
        self, host: str, op: str, *, timeout: float | None = None, **fields: Any
    ) -> Any:
        """Send one request to `host`'s agent and wait for its reply.

        Raises `HostUnavailable` (not delivered, or no reply: the host is not
        connected or the connection dropped) or `AgentError` (the agent refused).
        The reply is typed by its op (`agent.protocol`).
        """
        return await self._link(host).request(op, timeout=timeout, **fields)

    def post(self, host: str, op: str, **fields: Any) -> None:
        """Send a request without waiting for a reply (see `HostLink.post`).

        Raises `HostUnavailable` when it could not be written to the host's channel.
        """
        if not self._link(host).post(op, **fields):
            raise HostUnavailable(f"host {host}: the connection dropped")
