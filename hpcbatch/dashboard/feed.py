"""Keeps the model current: subscribe, load a snapshot, apply pushed events, reconnect.

The order matters: the event subscription is opened before the snapshot is
read, so no change between the two is lost. An event older than the snapshot
may still arrive after it; a job that the snapshot shows final is never put
back to a live state by one (final states are terminal), and any other stale
summary is replaced by that job's next event.

When the controller goes away the feed reports it (the app shows a banner)
and reconnects with backoff; an `overflow` event (the dashboard fell more than
the controller's backlog behind) triggers a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from hpcbatch.client import ClientError
from hpcbatch.dashboard.api import DashApi
from hpcbatch.dashboard.model import FINAL, Model

HOSTS_DELAY_S = 0.2  # coalesce host re-reads after allocation-changing job events
LIVE_S = 2.0  # how often the host view re-reads live usage while jobs run
BACKOFF_S = (0.25, 0.5, 1.0, 2.0, 3.0)


class Feed:
    """Runs until cancelled; `on_state(connected, message)` and `on_change(job_ids)` report."""

    def __init__(
        self,
        api: DashApi,
        model: Model,
        on_state: Callable[[bool, str], None],
        on_change: Callable[[set[int]], None],
    ) -> None:
        self.api = api
        self.model = model
        self.on_state = on_state
        self.on_change = on_change
        self.connected = False
        self._hosts_task: asyncio.Task[None] | None = None
        self._live_at = 0.0

    async def run(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    await self._session()
                    failures = 0  # an overflow: resync at once
                except ClientError as exc:
                    self.connected = False
                    delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                    self.on_state(False, f"{exc.message}; reconnecting every {delay:g}s")
                    failures += 1
                    await asyncio.sleep(delay)
        finally:
            if self._hosts_task is not None:
                self._hosts_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._hosts_task

    async def _session(self) -> None:
        stream = await self.api.subscribe()
        try:
            await self.load()
            self.connected = True
            self.on_state(True, "")
            self.on_change(set())
            while True:
                event = await stream.next()
                if event.get("event") == "overflow":
                    return
                self._apply(event)
        finally:
            await stream.close()

    async def load(self) -> None:
        ping = await self.api.call("ping")
        jobs: list[dict[str, Any]] = await self.api.call("jobs")
        for parent in [j for j in jobs if j.get("array_size") is not None]:
            jobs.extend(await self.api.call("jobs", array_parent=parent["id"], all=True))
        hosts = await self.api.call("hosts")
        queues = await self.api.call("queues")
        self.model.user = str(ping.get("user", ""))
        self.model.admin = bool(ping.get("admin"))
        self.model.load(jobs, hosts, queues)

    def _apply(self, event: dict[str, Any]) -> None:
        if event.get("event") == "job":
            job = event.get("job") or {}
            old = self.model.jobs.get(int(job.get("id", -1)))
            if old is not None and old.get("state") in FINAL and job.get("state") not in FINAL:
                return  # older than the snapshot (see the module docstring)
        stale_hosts = self.model.apply(event)
        if stale_hosts:
            self._refresh_hosts()
        changed = {int(event["job"]["id"])} if event.get("event") == "job" else set()
        self.on_change(changed)

    def live_tick(self) -> None:
        """Every LIVE_S, while some host runs jobs: read the hosts again for their live
        usage (sampled by the agents every heartbeat; no event announces it)."""
        now = time.monotonic()
        busy = any(h.get("jobs") for h in self.model.hosts.values())
        if busy and now - self._live_at >= LIVE_S:
            self._live_at = now
            self._refresh_hosts()

    def _refresh_hosts(self) -> None:
        if self._hosts_task is None or self._hosts_task.done():
            self._hosts_task = asyncio.create_task(self._hosts_later())

    async def _hosts_later(self) -> None:
        await asyncio.sleep(HOSTS_DELAY_S)
        with contextlib.suppress(ClientError):
            self.model.put_hosts(await self.api.call("hosts"))
            self.on_change(set())
