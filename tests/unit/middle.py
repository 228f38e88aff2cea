"""The controller's middle on a real store (SQLite file) and fake hosts, for unit tests.

`build` makes the real composition root (`Controller`, without starting its API,
links or loops) over a temporary store, with every host UP and sized, and a
`FakePool` of `FakeLink`s standing in for the SSH host pool: each link records
its requests and answers from a table of replies. Tests drive the intents and the scheduler's
`pass_once` directly, so a whole job's life runs in milliseconds.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcbatch.controller.app import Controller
from hpcbatch.controller.callers import Caller
from hpcbatch.controller.settings import ControllerSettings
from hpcbatch.core.states import HostState
from hpcbatch.inventory import load_inventory
from hpcbatch.store.db import Store
from hpcbatch.transport.pool import AgentError, Fencing, HostUnavailable

Reply = Callable[[dict[str, Any]], Awaitable[dict[str, Any]] | dict[str, Any]]
ALICE = Caller(uid=4242, user="alice")
BOB = Caller(uid=4343, user="bob")


@dataclass
class FakeLink:
    """A host link that is always connected, records requests and replies from `replies`."""

    name: str
    connected: bool = True
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    posted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    replies: dict[str, Reply] = field(default_factory=dict)

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        self.sent.append((op, fields))
        reply = self.replies.get(op)
        if reply is None:
            return {"started": 1000.0} if op == "launch" else {}
        out = reply(fields)
        return await out if not isinstance(out, dict) else out

    def post(self, op: str, **fields: Any) -> bool:
        self.posted.append((op, fields))
        return self.connected

    def ops(self, op: str) -> list[dict[str, Any]]:
        return [f for o, f in self.sent if o == op]


class FakePool:
    """HostPool's calls over FakeLinks: `request`/`post` raise HostUnavailable for a host
    whose link is not connected, as the real pool does."""

    def __init__(self, links: dict[str, FakeLink]) -> None:
        self.links = links
        self.fencing = Fencing()  # the controller's epoch, set when it takes the lead

    def _link(self, host: str) -> FakeLink:
        link = self.links.get(host)
        if link is None or not link.connected:
            raise HostUnavailable(f"host {host} is not connected: fake")
        return link

    async def request(self, host: str, op: str, **fields: Any) -> dict[str, Any]:
        return await self._link(host).request(op, **fields)

    def post(self, host: str, op: str, **fields: Any) -> None:
        self._link(host).post(op, **fields)

    def connected(self, host: str) -> bool:
        link = self.links.get(host)
        return link is not None and link.connected

    def connected_count(self) -> int:
        return sum(1 for link in self.links.values() if link.connected)

    def __getitem__(self, host: str) -> FakeLink:
        return self.links[host]

    def __len__(self) -> int:
        return len(self.links)

    def items(self) -> Any:
        return iter(self.links.items())


def refuse(message: str, code: str = "bad_request") -> Reply:
    def reply(_fields: dict[str, Any]) -> dict[str, Any]:
        raise AgentError(f"agent: launch: {message}", code, message)

    return reply


async def build(
    tmp_path: Path, hosts: int = 2, cpus: int = 4
) -> tuple[Controller, dict[str, FakeLink]]:
    entries = "".join(
        f'[[hosts]]\nname = "node{i}"\ncpus = {cpus}\nmemory_mb = 8192\n\n'
        for i in range(1, hosts + 1)
    )
    path = tmp_path / "inventory.toml"
    path.write_text(textwrap.dedent(entries), encoding="utf-8")
    inv = load_inventory(path)
    settings = ControllerSettings.build(path, home=tmp_path, kill_grace_s=0.5)
    store = await Store.open(tmp_path / "store.db")
    links = {name: FakeLink(name) for name in inv.hosts}
    c = Controller(settings, inv, store, pool=FakePool(links))  # type: ignore[arg-type]
    for host in c.cluster.hosts.values():
        host.state, host.cpus, host.memory_mb = HostState.UP, cpus, 8192
    await c.jobs.load()
    await c.submitter.load()
    return c, links


async def close(c: Controller) -> None:
    await c.jobs.drain_tasks()
    await c.store.close()


async def settle(c: Controller) -> None:
    """Let the background tasks (launches, acks, kills, summaries) run to their end."""
    await asyncio.wait_for(c.jobs.idle(), timeout=10)
