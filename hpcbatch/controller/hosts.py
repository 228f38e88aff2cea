"""Host connections as the controller sees them: facts, state, and reconciliation.

When a host's agent connects (first time, after a network cut, or after a
controller restart) its list of unacknowledged attempts is reconciled with the
store before the host takes new work: finished attempts are collected, live
ones re-adopted, attempts the controller gave up on are fenced (killed), and
attempts that were written down but never reached the host are launched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hpcbatch.controller.cluster import Cluster, HostRuntime
from hpcbatch.controller.events import EventBus
from hpcbatch.controller.jobs import JobService
from hpcbatch.controller.relay import RelayService
from hpcbatch.core.facts import FactsError, effective_resources, facts_from_agent
from hpcbatch.core.records import AttemptState, parse_attempt_id
from hpcbatch.core.states import POWER_STATES, AdminState, HostState
from hpcbatch.store.db import Store, StoreError
from hpcbatch.transport.agent.protocol import HelloReply, ReportedAttempt
from hpcbatch.transport.link import HostLink
from hpcbatch.transport.pool import AgentError, HostPool, HostUnavailable

log = logging.getLogger(__name__)


class HostService:
    """Implements the transport's LinkListener for every host."""

    def __init__(
        self,
        store: Store,
        cluster: Cluster,
        bus: EventBus,
        jobs: JobService,
        relay: RelayService,
        pool: HostPool,
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.bus = bus
        self.jobs = jobs
        self.relay = relay
        self.pool = pool  # fence and ack of what a reconnecting host reports
        # Health checks and resource checks on connect (controller/health.py), if set.
        self.on_connect: Callable[[HostRuntime], Awaitable[None]] | None = None
        # Told of each host whose state may have changed (the events feed).
        self.observers: list[Callable[[HostRuntime], None]] = []

    def publish(self, host: HostRuntime) -> None:
        self.bus.publish({"event": "host", "host": host.summary()})
        for observe in self.observers:
            observe(host)

    async def load(self) -> None:
        """Restore operator states (drain) from the store."""
        for name, (state, reason) in (await self.store.admin.host_states()).items():
            host = self.cluster.hosts.get(name)
            if host is not None:
                host.admin = AdminState(state)
                host.admin_reason = reason

    async def set_admin(self, name: str, state: AdminState, reason: str | None) -> HostRuntime:
        """Drain, resume or take a host DOWN (kept across restarts). DOWN ends its
        running attempts as host failures: killed there, retried per their rules."""
        host = self.cluster.hosts[name]
        await self.store.admin.set_host(name, str(state), reason, time.time())
        host.admin, host.admin_reason = state, reason
        self.publish(host)
        if state == AdminState.DOWN:
            await self.host_failed(name, f"host {name} set DOWN: {reason}")
        self.jobs.wake_scheduler()
        return host

    async def mark_down(self, name: str, why: str) -> None:
        """The host has been silent too long: DOWN until it reconnects; its attempts
        end as host failures (fenced there if it comes back)."""
        host = self.cluster.hosts[name]
        if host.state != HostState.DOWN:
            log.warning("%s: DOWN: %s", name, why)
        host.state, host.reason = HostState.DOWN, why
        self.publish(host)
        await self.host_failed(name, f"host {name} lost: {why}")

    async def host_failed(self, name: str, reason: str) -> None:
        for job, _a in self.jobs.attempts_on(name):
            await self.jobs.fail_job(job, reason, host_failure=True)

    # ------------------------------------------------------------------ LinkListener

    async def link_up(self, link: HostLink, hello: HelloReply) -> None:
        host = self.cluster.hosts[link.name]
        host.state = HostState.CONNECTING
        try:
            facts = facts_from_agent(hello.get("facts") or {})
        except FactsError as exc:
            host.state, host.reason = HostState.UNREACHABLE, f"bad facts from the agent: {exc}"
            self.publish(host)
            await link.drop()
            return
        spec = host.spec
        cpus, memory_mb, gpus, mismatches = effective_resources(
            facts, spec.cpus, spec.memory_mb, spec.gpus, host=spec.name
        )
        host.facts, host.cpus, host.memory_mb, host.gpus = facts, cpus, memory_mb, gpus
        host.mismatches = list(mismatches)
        for line in mismatches:
            log.warning("%s", line)
        await self.store.admin.save_facts(spec.name, hello.get("facts") or {}, time.time())
        try:
            await self.reconcile(link, list(hello.get("attempts") or []))
            if self.on_connect is not None:
                await self.on_connect(host)
        except (HostUnavailable, AgentError) as exc:
            host.state, host.reason = HostState.UNREACHABLE, f"reconcile failed: {exc}"
            self.publish(host)
            return
        host.state, host.reason = HostState.UP, None
        log.info("%s: up (%s CPUs, %s MB, GPUs %s)", spec.name, cpus, memory_mb, list(gpus))
        self.publish(host)
        self.jobs.wake_scheduler()

    async def link_down(self, link: HostLink, reason: str) -> None:
        host = self.cluster.hosts[link.name]
        if host.state in POWER_STATES:
            return  # an elastic host not up yet, or going down: nothing ran there
        if host.state != HostState.DOWN:
            host.state = HostState.UNREACHABLE
        host.reason = reason
        log.warning("%s: %s", link.name, reason)
        self.relay.host_down(link.name, reason)
        await self.jobs.host_lost(link.name, reason)
        self.publish(host)
        self.jobs.wake_scheduler()

    def agent_event(self, link: HostLink, event: dict[str, Any]) -> None:
        kind = event.get("ev")
        if kind == "exit":
            self.jobs.spawn(self._collect(link.name, event), f"exit-{event.get('attempt')}")
        elif self.relay.handles(kind):
            self.relay.on_event(link.name, event)
        elif kind == "progress":
            self.jobs.note_progress(link.name, event)
        elif kind == "heartbeat":
            host = self.cluster.hosts.get(link.name)
            usage = event.get("usage")
            if host is not None and (usage or host.live.now):
                host.live.note(
                    float(event.get("t") or 0.0), usage if isinstance(usage, dict) else {}
                )
        elif kind == "error":
            log.warning("%s: agent: %s", link.name, event.get("error"))

    async def _collect(self, host: str, event: dict[str, Any]) -> None:
        """Record an exit; while the store cannot be written (disk full, read-only),
        try again with backoff: the agent keeps the exit until it is acknowledged."""
        delay = 0.5
        while True:
            try:
                await self.jobs.on_exit(host, event)
                return
            except StoreError as exc:
                log.error("%s: cannot record the exit of %s, retrying in %.1f s: %s",
                          host, event.get("attempt"), delay, exc)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    # ------------------------------------------------------------------ reconcile

    async def reconcile(self, link: HostLink, reported: list[ReportedAttempt]) -> None:
        name = link.name
        by_id = {str(r.get("attempt")): r for r in reported}
        keep: list[str] = []
        stray_running: list[str] = []
        stray_exited: list[str] = []
        for aid, info in by_id.items():
            try:
                job_id, attempt, node = parse_attempt_id(aid)
            except ValueError:
                continue
            job = self.jobs.live(job_id)
            a = None
            if job is not None and job.attempt == attempt:
                a = next(
                    (
                        x
                        for x in self.jobs.current_attempts(job)
                        if x.node == node and x.host == name
                    ),
                    None,
                )
            live = a is not None and a.state in (AttemptState.STARTING, AttemptState.RUNNING)
            if not live:
                (stray_running if info.get("state") == "running" else stray_exited).append(aid)
                continue
            assert job is not None and a is not None
            if info.get("state") == "running":
                keep.append(aid)
                if a.state == AttemptState.STARTING:
                    # `hello` lists no start time: the launch's reply was lost.
                    await self.jobs.mark_running(job, a, time.time())
            else:
                exit_info = dict(info.get("exit") or {})
                if info.get("state") == "lost" and not exit_info.get("reason"):
                    exit_info["reason"] = f"lost on {name}: no exit status was recorded"
                await self.jobs.on_exit(name, {**exit_info, "attempt": aid})
        if stray_running:
            # Fencing: the controller gave up on these; they must not run on.
            reply = await self.pool.request(name, "fence", keep=keep)
            log.warning("%s: fenced stale attempts %s", name, reply.get("killed"))
        if stray_exited:
            await self.pool.request(name, "ack", attempts=stray_exited)
        for job, a in self.jobs.attempts_on(name):
            if a.attempt_id in by_id:
                continue
            if a.state == AttemptState.STARTING:
                self.jobs.launch_soon(job, [a])
            else:
                await self.jobs.fail_job(
                    job,
                    f"host {name} lost attempt {a.attempt_id}: it is no longer known there",
                    host_failure=True,
                )
