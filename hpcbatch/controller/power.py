"""Elastic hosts: resume for work, suspend when idle (docs/elastic.md).

The scheduler's plan names the powered-down hosts a waiting job needs
(`Plan.resume`); `PowerManager.resume` runs the compute environment's
`resume_command` with their names and opens their links. A host that has not
connected `resume_timeout_s` after its resume goes DOWN with the command's
output as the reason, and the next pass places the job elsewhere. Each tick
also suspends hosts idle for `idle_time_s` beyond `min_vcpus` (dearest
first: highest weight) and resumes hosts while the environment is below
`min_vcpus`. The commands are the operator's (a cloud CLI, libvirt, IPMI):
hpcbatch ships none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from hpcbatch.controller.cluster import Cluster, HostRuntime
from hpcbatch.core.states import AdminState, HostState
from hpcbatch.inventory import ResolvedComputeEnv

log = logging.getLogger(__name__)

_OUTPUT_MAX = 2000  # characters of a command's output kept as a reason


async def run_power_command(command: str, names: list[str], timeout_s: float) -> tuple[int, str]:
    """Run an operator's power command with the host names as arguments (and in
    HPCBATCH_HOSTS, comma-separated): (exit status, output). 124 on a timeout."""
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        command + ' "$@"',
        "hpcbatch-power",
        *names,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "HPCBATCH_HOSTS": ",".join(names)},
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()
        return 124, f"timed out after {timeout_s:g} s"
    text = out.decode(errors="replace").strip()
    return proc.returncode or 0, text[-_OUTPUT_MAX:]


class PowerManager:
    """Runs resume and suspend commands and keeps the power states of elastic hosts."""

    def __init__(
        self,
        cluster: Cluster,
        connect: Callable[[str], None],
        disconnect: Callable[[str], Awaitable[None]],
        kick: Callable[[str], None],
        changed: Callable[[HostRuntime], None],
        wake: Callable[[], None],
        tick_s: float = 0.25,
        persist: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self.cluster = cluster
        self._connect = connect
        self._disconnect = disconnect
        self._kick = kick
        self._changed = changed  # publish the host's new state
        self._wake = wake  # the scheduler
        self.tick_s = tick_s
        self._persist = persist  # the store: a host's power state, kept across restarts
        self._task: asyncio.Task[None] | None = None
        self._work: set[asyncio.Task[None]] = set()
        self.output: dict[str, str] = {}  # the last resume command's output per host
        self.timings: dict[str, dict[str, float]] = {}  # per host: resume phases (benchmark)

    def elastic_hosts(self) -> list[HostRuntime]:
        return [h for h in self.cluster.hosts.values() if h.elastic]

    def start(self, stored: Mapping[str, str] | None = None) -> None:
        """Bring each elastic environment to max(min_vcpus, desired_vcpus), then watch.

        `stored`: each host's last power state from the store (a restart). A host
        left POWERED_DOWN stays down (no command runs); one left POWERING_UP is
        connected (it still has its resume timeout, from now); one left
        POWERING_DOWN is suspended again. Hosts with no stored state (a first
        start, or DOWN) are not known: the cheapest idle ones are resumed up to
        the target and the others suspended (the commands are idempotent). Hosts
        holding jobs stay as they are and connect as usual."""
        stored = stored or {}
        now = time.time()
        for ce in self._envs():
            target = max(ce.min_vcpus, ce.desired_vcpus or 0)
            hosts = [self.cluster.hosts[n] for n in ce.hosts]
            fresh = [h for h in hosts if h.state == HostState.UNKNOWN and not h.holders]
            on = sum(_cpus(h) for h in hosts if h.holders)
            wake: list[str] = []
            sleep: list[str] = []
            for h in sorted(fresh, key=lambda h: h.spec.weight):
                was = stored.get(h.name)
                h.state = HostState.POWERED_DOWN
                if was == "POWERED_DOWN":
                    continue  # kept down; `_top_up` resumes it if the target needs it
                if was == "POWERING_UP":
                    h.powering_since = now
                    self._set(h, HostState.POWERING_UP, "resumed before a restart")
                    self._connect(h.name)
                    on += _cpus(h)
                elif on < target and was != "POWERING_DOWN":
                    wake.append(h.name)
                    on += _cpus(h)
                else:
                    sleep.append(h.name)
            self.resume(wake)
            for name in sleep:
                self._set(self.cluster.hosts[name], HostState.POWERING_DOWN, "powering down")
            if sleep:
                self._spawn(self._suspend(ce, sleep))
        self._task = asyncio.create_task(self._run(), name="power")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for t in list(self._work):
            t.cancel()
        await asyncio.gather(*self._work, return_exceptions=True)

    def _envs(self) -> list[ResolvedComputeEnv]:
        return [ce for ce in self.cluster.inventory.compute_environments.values() if ce.elastic]

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    def _set(self, host: HostRuntime, state: HostState, reason: str | None) -> None:
        host.state, host.reason = state, reason
        self._changed(host)
        if self._persist is not None:
            self._spawn(self._keep(host.name, str(state)))

    async def _keep(self, name: str, state: str) -> None:
        assert self._persist is not None
        try:
            await self._persist(name, state)
        except Exception as exc:  # the store down: the state is kept in memory only
            log.warning("%s: cannot keep power state %s in the store: %s", name, state, exc)

    # ------------------------------------------------------------------ resume

    def resume(self, names: Iterable[str]) -> None:
        """Power up these hosts (powered down ones only), grouped by environment."""
        groups: dict[str, tuple[ResolvedComputeEnv, list[str]]] = {}
        for name in names:
            host = self.cluster.hosts.get(name)
            ce = self.cluster.elastic_env_of(name)
            if host is None or ce is None or host.state != HostState.POWERED_DOWN:
                continue
            groups.setdefault(ce.name, (ce, []))[1].append(name)
        now = time.time()
        for ce, group in groups.values():
            for name in group:
                host = self.cluster.hosts[name]
                host.powering_since = now
                self.timings[name] = {"resume_start": now}
                self._set(host, HostState.POWERING_UP, f"resumed at {time.strftime('%H:%M:%S')}")
            self._spawn(self._resume(ce, group))

    async def _resume(self, ce: ResolvedComputeEnv, names: list[str]) -> None:
        assert ce.resume_command is not None
        log.info("%s: resuming %s", ce.name, ",".join(names))
        rc, out = await run_power_command(ce.resume_command, names, ce.resume_timeout_s)
        ended = time.time()
        for name in names:
            self.output[name] = out
            self.timings.setdefault(name, {})["resume_command_end"] = ended
        if rc != 0:
            for name in names:
                await self._fail(name, f"resume_command exited {rc}: {out or '(no output)'}")
            return
        for name in names:
            if self.cluster.hosts[name].state == HostState.POWERING_UP:
                self._connect(name)

    async def _fail(self, name: str, why: str) -> None:
        host = self.cluster.hosts[name]
        await self._disconnect(name)
        log.warning("%s: resume failed: %s", name, why)
        host.powering_since = None
        self._set(host, HostState.DOWN, why)
        self._wake()

    def _top_up(self, ce: ResolvedComputeEnv, target: int) -> None:
        """Resume the cheapest powered-down hosts while the environment has fewer
        than `target` vCPUs on (or coming on)."""
        hosts = [self.cluster.hosts[n] for n in ce.hosts]
        on = sum(_cpus(h) for h in hosts if h.power() not in ("POWERED_DOWN", "OFF"))
        wake: list[str] = []
        for h in sorted(hosts, key=lambda h: h.spec.weight):
            if on >= target:
                break
            if h.state == HostState.POWERED_DOWN and h.admin == AdminState.ACTIVE:
                wake.append(h.name)
                on += _cpus(h)
        if wake:
            self.resume(wake)

    # ------------------------------------------------------------------ the watch

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)  # a periodic watch of timers, not a wait
            try:
                self.tick(time.time(), time.monotonic())
            except Exception:  # the watch must go on whatever one host does
                log.exception("power watch failed")

    def tick(self, now: float, mono: float) -> None:
        for host in self.elastic_hosts():
            if host.state == HostState.POWERING_UP:
                since = host.powering_since or now
                ce = self.cluster.elastic_env_of(host.name)
                limit = ce.resume_timeout_s if ce is not None else 600
                if now - since > limit:
                    out = self.output.get(host.name) or "(no output)"
                    why = f"resume timed out after {limit} s: {out}"
                    host.powering_since = None  # once
                    self._spawn(self._fail(host.name, why))
                else:
                    self._kick(host.name)  # connect as soon as sshd answers
            idle = host.state == HostState.UP and not host.holders
            host.idle_since = (host.idle_since or mono) if idle else None
        for ce in self._envs():
            self._suspend_idle(ce, mono)
            self._top_up(ce, ce.min_vcpus)

    def _suspend_idle(self, ce: ResolvedComputeEnv, mono: float) -> None:
        hosts = [self.cluster.hosts[n] for n in ce.hosts]
        on = sum(_cpus(h) for h in hosts if h.power() not in ("POWERED_DOWN", "OFF"))
        idle = [
            h for h in hosts if h.idle_since is not None and mono - h.idle_since >= ce.idle_time_s
        ]
        chosen: list[str] = []
        for h in sorted(idle, key=lambda h: -h.spec.weight):  # dearest first
            if on - _cpus(h) < ce.min_vcpus:
                continue
            on -= _cpus(h)
            chosen.append(h.name)
            h.idle_since = None
            self._set(h, HostState.POWERING_DOWN, f"idle for {ce.idle_time_s} s")
        if chosen:
            self._spawn(self._suspend(ce, chosen))

    async def _suspend(self, ce: ResolvedComputeEnv, names: list[str]) -> None:
        assert ce.suspend_command is not None
        log.info("%s: suspending %s", ce.name, ",".join(names))
        for name in names:
            await self._disconnect(name)
        rc, out = await run_power_command(ce.suspend_command, names, ce.resume_timeout_s)
        for name in names:
            host = self.cluster.hosts[name]
            if rc == 0:
                self._set(host, HostState.POWERED_DOWN, None)
            else:
                self._set(host, HostState.DOWN, f"suspend_command exited {rc}: {out}")
        self._wake()


def _cpus(host: HostRuntime) -> int:
    return host.cpus or host.spec.cpus or 0
