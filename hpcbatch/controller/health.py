"""Host health as the controller watches it: silent hosts, health checks, missing resources.

A host stops taking work without an operator in three ways:

* Silence. A connected link that brings nothing, not even a heartbeat, for
  `silence_limit_s` is dropped: a black-holed TCP connection looks healthy to
  everything else for minutes. A host not heard from for `down_after_s` is
  marked DOWN: its attempts end as host failures (retried per their rules,
  maybe elsewhere), and when it comes back, reconcile fences (kills) them there
  before the host takes new work. Until then its jobs are only out of touch:
  their shepherds run on, enforce time limits, and their exits are collected.
* Health checks. A compute environment may name a shell command, run through
  the agent's `exec` on each of its hosts when the host connects (before it is
  UP, so before any job starts there) and every interval. A non-zero exit or a
  timeout drains the host with the output as the reason; a later pass resumes
  a host that a check drained (never one an operator drained).
* Resources. A host whose probed CPUs, memory or GPUs are fewer than the
  inventory declares is drained with the reason (resumed when a later probe
  is fine): jobs sized by the declaration would not fit there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpcbatch.controller.cluster import HostRuntime
from hpcbatch.core.facts import HostFacts
from hpcbatch.core.states import POWER_STATES, AdminState, HostState
from hpcbatch.inventory import ResolvedHost, ResolvedInventory
from hpcbatch.transport.pool import AgentError, HostPool, HostUnavailable

if TYPE_CHECKING:
    from hpcbatch.controller.hosts import HostService
    from hpcbatch.controller.settings import ControllerSettings

log = logging.getLogger(__name__)

HEALTH_PREFIX = "health check failed"
RESOURCES_PREFIX = "resources below declared"
_OUTPUT_SHOWN = 300


@dataclass(frozen=True, slots=True)
class HealthCheck:
    command: str
    interval_s: int
    timeout_s: int


def host_checks(inventory: ResolvedInventory, host: str) -> list[HealthCheck]:
    """The health checks of every compute environment holding `host`, each command once."""
    seen: dict[str, HealthCheck] = {}
    for env in inventory.compute_environments.values():
        if env.health_check and host in env.hosts and env.health_check not in seen:
            seen[env.health_check] = HealthCheck(
                env.health_check, env.health_check_interval_s, env.health_check_timeout_s
            )
    return list(seen.values())


def resources_below(spec: ResolvedHost, facts: HostFacts) -> list[str]:
    """What the host has less of than the inventory declares, in words."""
    short = []
    if spec.cpus is not None and facts.cpus < spec.cpus:
        short.append(f"{spec.cpus} CPUs declared, {facts.cpus} found")
    if spec.memory_mb is not None and facts.memory_mb < spec.memory_mb:
        short.append(f"{spec.memory_mb} MB memory declared, {facts.memory_mb} MB found")
    if spec.gpus is not None and len(facts.gpus) < spec.gpus:
        short.append(f"{spec.gpus} GPUs declared, {len(facts.gpus)} found")
    return short


def _output(stdout: str, stderr: str) -> str:
    text = " ".join((stdout.strip() + " " + stderr.strip()).split())
    return text[-_OUTPUT_SHOWN:] or "no output"


class HostMonitor:
    """The background loop that watches silence and runs health checks.

    Start with `start()`, stop with `stop()`. `on_connect` runs the checks of a
    host that just connected (HostService calls it before the host is UP).
    """

    def __init__(self, hosts: HostService, pool: HostPool, settings: ControllerSettings) -> None:
        self.hosts = hosts
        self.pool = pool
        self.settings = settings
        self.tick_s = max(0.2, min(1.0, settings.heartbeat_s))
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0
        self._next_check: dict[str, float] = {}
        self._checking: set[str] = set()

    def start(self) -> None:
        self._started = asyncio.get_running_loop().time()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="host-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)  # a periodic watch, not a wait for an event
            try:
                await self.tick()
            except Exception:  # the watch must go on whatever one host does
                log.exception("host monitor pass failed")

    async def tick(self) -> None:
        now = asyncio.get_running_loop().time()
        for name, link in self.pool.items():
            host = self.hosts.cluster.hosts[name]
            if link.connected:
                silent = now - link.last_seen
                if silent > self.settings.silence_limit_s:
                    log.warning("%s: silent for %.0f s: dropping the connection", name, silent)
                    await link.drop(f"no heartbeat for {silent:.0f} s")
                elif host.state == HostState.UP and now >= self._next_check.get(name, 0.0):
                    self._spawn_check(host)
                continue
            if host.state in POWER_STATES:
                continue  # elastic: the power manager times resumes (controller/power.py)
            silent = now - max(link.last_seen, self._started)
            # `attempts_on` scans every active job (17 ms at 50,000 queued): called for
            # each DOWN host each tick, a few dozen DOWN hosts took the whole loop. The
            # host's holders (attempts holding resources there) cover every live
            # attempt on it and are O(1) to test.
            if silent > self.settings.down_after_s and (
                host.state != HostState.DOWN or (host.holders and self.hosts.jobs.attempts_on(name))
            ):
                why = f"no heartbeat for {silent:.0f} s"
                if link.last_error:
                    why += f" ({link.last_error})"
                await self.hosts.mark_down(name, why)

    # ------------------------------------------------------------------ checks

    async def on_connect(self, host: HostRuntime) -> None:
        """Resources and health checks of a host that just connected, before it is UP."""
        if host.facts is not None:
            short = resources_below(host.spec, host.facts)
            if short:
                await self._set_drain(host, f"{RESOURCES_PREFIX}: " + "; ".join(short))
            else:
                await self._clear_drain(host, RESOURCES_PREFIX)
        await self.check(host)

    def _spawn_check(self, host: HostRuntime) -> None:
        if host.name in self._checking:
            return
        if not host_checks(self.hosts.cluster.inventory, host.name):
            self._next_check[host.name] = float("inf")  # none configured for it
            return
        self.hosts.jobs.spawn(self.check(host), f"health-{host.name}")

    async def check(self, host: HostRuntime) -> bool | None:
        """Run the host's health checks now: True passed, False failed (drained), None:
        nothing to run, or the host went away meanwhile."""
        checks = host_checks(self.hosts.cluster.inventory, host.name)
        if not checks or host.name in self._checking:
            return None
        self._checking.add(host.name)
        try:
            failure: str | None = None
            for chk in checks:
                try:
                    reply = await self.pool.request(
                        host.name,
                        "exec",
                        argv=["/bin/sh", "-c", chk.command],
                        timeout_s=float(chk.timeout_s),
                        timeout=chk.timeout_s + 30.0,
                    )
                except HostUnavailable:
                    return None  # silence handling covers a host that went away
                except AgentError as exc:
                    failure = f"{HEALTH_PREFIX}: {chk.command}: {exc}"
                    break
                out = _output(reply["stdout"], reply["stderr"])
                if reply.get("timed_out"):
                    failure = f"{HEALTH_PREFIX}: {chk.command}: timed out after {chk.timeout_s} s"
                elif reply.get("code") != 0:
                    how = (
                        f"exit code {reply['code']}"
                        if reply.get("code") is not None
                        else f"signal {reply.get('signal')}"
                    )
                    failure = f"{HEALTH_PREFIX}: {chk.command}: {how}: {out}"
                if failure:
                    break
            loop = asyncio.get_running_loop()
            self._next_check[host.name] = loop.time() + min(c.interval_s for c in checks)
            if failure:
                log.warning("%s: %s", host.name, failure)
                await self._set_drain(host, failure)
                return False
            await self._clear_drain(host, HEALTH_PREFIX)
            return True
        finally:
            self._checking.discard(host.name)

    async def _set_drain(self, host: HostRuntime, reason: str) -> None:
        """Drain for a cause found here; an operator's drain or DOWN is left alone."""
        if host.admin == AdminState.ACTIVE or (
            host.admin == AdminState.DRAIN
            and (host.admin_reason or "").startswith((HEALTH_PREFIX, RESOURCES_PREFIX))
            and host.admin_reason != reason
        ):
            await self.hosts.set_admin(host.name, AdminState.DRAIN, reason)

    async def _clear_drain(self, host: HostRuntime, prefix: str) -> None:
        if host.admin == AdminState.DRAIN and (host.admin_reason or "").startswith(prefix):
            log.info("%s: %s no longer: resumed", host.name, prefix)
            await self.hosts.set_admin(host.name, AdminState.ACTIVE, None)
