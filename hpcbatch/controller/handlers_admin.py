"""The API's cluster and controller operations: ping, status, stats, hosts, queues, the
operators' host and queue states, and shutdown.

Reads go to the read model; changes to the host service or to the controller's
own callbacks (set a queue's state, stop). Only administrators change states.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hpcbatch import __version__
from hpcbatch.controller.apiargs import HostArgs, NoArgs, Operation, QueueUpdateArgs, SharesArgs
from hpcbatch.controller.callers import ApiError, Caller
from hpcbatch.controller.readmodel import ReadModel
from hpcbatch.core.states import AdminState


class HostSummary(Protocol):
    def summary(self) -> dict[str, Any]: ...


class HostStates(Protocol):
    """The host service (`HostService.set_admin`): an operator's state for a host."""

    async def set_admin(self, name: str, state: AdminState, reason: str | None) -> HostSummary: ...


@dataclass(frozen=True, slots=True)
class ControllerHooks:
    """What the admin operations need of the controller process itself."""

    started_at: float
    inventory_path: str
    set_queue_state: Callable[[str, bool, str | None], Awaitable[None]]
    request_stop: Callable[[], None]
    # `status`: the store as an operator names it (no password), this controller's lead
    # (host, pid, epoch, since: in memory) and the standbys seen lately (from the store)
    store: dict[str, str]
    lead: Callable[[], dict[str, Any]]
    standbys: Callable[[], Awaitable[list[dict[str, Any]]]]


QUEUED = ("SUBMITTED", "PENDING", "RUNNABLE")
"""The job states that make a queue's depth: accepted, not started yet."""


def _admin(caller: Caller, what: str) -> None:
    if not caller.admin:
        raise ApiError("forbidden", f"only an administrator may {what}")


class AdminHandlers:
    def __init__(self, read: ReadModel, hosts: HostStates, hooks: ControllerHooks) -> None:
        self._read = read
        self._hosts = hosts
        self._hooks = hooks

    def table(self) -> dict[str, Operation[Any]]:
        return {
            "ping": Operation(NoArgs, self.ping),
            "status": Operation(NoArgs, self.status),
            "stats": Operation(NoArgs, self.stats),
            "hosts": Operation(NoArgs, self.hosts),
            "drain": Operation(HostArgs, self.drain),
            "resume": Operation(HostArgs, self.resume),
            "down": Operation(HostArgs, self.down),
            "queues": Operation(NoArgs, self.queues),
            "shares": Operation(SharesArgs, self.shares),
            "queue_update": Operation(QueueUpdateArgs, self.queue_update),
            "shutdown": Operation(NoArgs, self.shutdown),
        }

    async def ping(self, args: NoArgs, caller: Caller) -> Any:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": time.time() - self._hooks.started_at,
            "user": caller.user,
            "admin": caller.admin,
            "inventory": self._hooks.inventory_path,
            "role": "active",  # a standby has no API until it takes over
            "host": socket.gethostname(),
            "epoch": self._hooks.lead()["epoch"],
        }

    async def status(self, args: NoArgs, caller: Caller) -> Any:
        """Which controller is active (and since when, at which epoch), the standbys
        seen, the store, hosts up and down, and the queue's depth."""
        standbys = await self._hooks.standbys()
        stats = self._read.stats()
        hosts: dict[str, int] = stats["hosts"]
        jobs: dict[str, int] = stats["jobs"]
        up = hosts.get("UP", 0)
        return {
            "controller": {**self._hooks.lead(), "version": __version__},
            "standbys": standbys,
            "store": self._hooks.store,
            "hosts": {"total": sum(hosts.values()), "up": up,
                      "down": sum(hosts.values()) - up, "by_state": hosts},
            "queue": {"depth": sum(jobs.get(s, 0) for s in QUEUED),
                      "running": jobs.get("STARTING", 0) + jobs.get("RUNNING", 0),
                      "by_state": jobs},
        }  # fmt: skip

    async def stats(self, args: NoArgs, caller: Caller) -> Any:
        return self._read.stats()

    async def hosts(self, args: NoArgs, caller: Caller) -> Any:
        return self._read.hosts()

    async def queues(self, args: NoArgs, caller: Caller) -> Any:
        return self._read.queues()

    async def shares(self, args: SharesArgs, caller: Caller) -> Any:
        return self._read.shares(args.queue)

    def _host(self, args: HostArgs, caller: Caller) -> str:
        _admin(caller, "change host states")
        if args.host is None or not self._read.has_host(args.host):
            raise ApiError("not_found", f"unknown host {args.host!r}")
        return args.host

    async def drain(self, args: HostArgs, caller: Caller) -> Any:
        name = self._host(args, caller)
        reason = args.reason or f"drained by {caller.user}"
        return (await self._hosts.set_admin(name, AdminState.DRAIN, reason)).summary()

    async def down(self, args: HostArgs, caller: Caller) -> Any:
        name = self._host(args, caller)
        reason = args.reason or f"set down by {caller.user}"
        return (await self._hosts.set_admin(name, AdminState.DOWN, reason)).summary()

    async def resume(self, args: HostArgs, caller: Caller) -> Any:
        name = self._host(args, caller)
        return (await self._hosts.set_admin(name, AdminState.ACTIVE, None)).summary()

    async def queue_update(self, args: QueueUpdateArgs, caller: Caller) -> Any:
        _admin(caller, "change queue states")
        name = args.queue
        if name is None or not self._read.has_queue(name):
            raise ApiError("not_found", f"unknown queue {name!r}")
        state = (args.state or "").upper()
        if state not in ("ENABLED", "DISABLED"):
            raise ApiError("bad_request", "state must be ENABLED or DISABLED")
        await self._hooks.set_queue_state(name, state == "ENABLED", args.reason)
        return next(q for q in self._read.queues() if q["name"] == name)

    async def shutdown(self, args: NoArgs, caller: Caller) -> Any:
        _admin(caller, "stop the controller")
        self._hooks.request_stop()
        return {"stopping": True}
