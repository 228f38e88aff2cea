"""The launcher: sends what the job service decided to the hosts, and reports back.

It is the job service's hands on the hosts (`HostActions` in jobs.py): it
launches a started job's nodes with the request launchspec.py computes
(pulling the image first for a containerised job), kills attempts, asks a
job's processes to stop on cancel, and acknowledges collected exits in
batches. What comes back goes through the job service's intents
(`mark_running`, `fail_job`, `on_exit`); the launcher writes no job state.

A multi-node job's nodes are launched in two waves: every other node at once,
then the main node, so that when the main node's script starts `mpirun` (or
srun) the nodes it reaches through the relay are already there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from hpcbatch.controller.cluster import Cluster
from hpcbatch.controller.containers import PULL_TIMEOUT_S
from hpcbatch.controller.jobs import JobService
from hpcbatch.controller.launchspec import container_field, launch_fields
from hpcbatch.controller.secrets import SecretService, SecretUnavailable
from hpcbatch.controller.settings import ControllerSettings
from hpcbatch.core.containers import ImageError
from hpcbatch.core.records import AttemptRecord, AttemptState, JobRecord, current_attempts
from hpcbatch.transport.pool import AgentError, HostPool, HostUnavailable

log = logging.getLogger(__name__)


class Launcher:
    """Launch, kill, terminate and acknowledge over the host pool."""

    def __init__(
        self,
        jobs: JobService,
        cluster: Cluster,
        pool: HostPool,
        settings: ControllerSettings,
        secrets: SecretService | None = None,
    ) -> None:
        self.jobs = jobs
        self.cluster = cluster
        self.pool = pool
        self.settings = settings
        self.secrets = secrets
        self._acks: dict[str, list[str]] = {}  # host -> exits to acknowledge

    # ------------------------------------------------------------------ launch

    def launch(self, job: JobRecord, only: Iterable[AttemptRecord] | None = None) -> None:
        """Launch a started job's nodes (or only the given ones), in the background."""
        if only is None and job.spec.is_gang:
            attempts = current_attempts(job)
            self.jobs.spawn(self._launch_all(job, attempts), f"launch-{job.id}.{job.attempt}")
            return
        targets = list(only) if only is not None else current_attempts(job)
        for a in targets:
            self.jobs.spawn(self._launch_one(job, a), f"launch-{a.attempt_id}")

    async def _launch_all(self, job: JobRecord, attempts: list[AttemptRecord]) -> None:
        """Launch a job's node attempts: the non-main nodes together, then the main node."""
        main = job.spec.main_node
        first = [a for a in attempts if a.node != main]
        last = [a for a in attempts if a.node == main]
        if first:
            await asyncio.gather(*(self._launch_one(job, a) for a in first))
            if (
                any(a.state == AttemptState.STARTING for a in first)
                or self.jobs.live(job.id) is None
            ):
                # A node did not start: its launch was refused (the job failed) or its
                # host is gone (the job fails: see JobService.host_lost).
                return
        for a in last:
            await self._launch_one(job, a)

    async def _launch_one(self, job: JobRecord, a: AttemptRecord) -> None:
        if not self.pool.connected(a.host):
            return  # launched when the host (re)connects: see HostService.reconcile
        fields = launch_fields(self.cluster, job, a)
        if job.spec.secrets and not await self._add_secrets(job, fields["env"]):
            return
        if job.spec.image:
            container = await self._pull(job, a, fields.get("user"))
            if container is False:
                return
            fields["container"] = container
        # The check and the write to the channel happen with no await between them,
        # so a cancel cannot slip in and be overtaken by this launch.
        # (A gang's job may be RUNNING already: a first node's exit can overtake the
        # launch of its main node.)
        if not job.state.is_active or a.state != AttemptState.STARTING:
            return
        try:
            reply = await self.pool.request(
                a.host,
                "launch",
                attempt=a.attempt_id,
                timeout_s=job.spec.time_limit_s,
                kill_grace_s=self.settings.kill_grace_s,
                **fields,
            )
        except HostUnavailable:
            return  # the host reconnect path finds it STARTING and launches again
        except AgentError as exc:
            if exc.code == "exists":
                return  # already launched (a retry after a lost reply): its exit will come
            why = f"launch failed on {a.host}: {exc.message}"
            await self.jobs.fail_job(job, why)
            return
        started = float(reply.get("started") or time.time())
        await self.jobs.mark_running(job, a, started, fields["stdout"], fields["stderr"])

    async def _add_secrets(self, job: JobRecord, env: dict[str, str]) -> bool:
        """The job's secrets into its environment (only on the way to the host: never
        stored); False when one cannot be had, and the job failed for it."""
        try:
            if self.secrets is None:
                raise SecretUnavailable("this controller keeps no secrets")
            env.update(await self.secrets.resolve(dict(job.spec.secrets), job.user, job.uid))
        except SecretUnavailable as exc:
            if self.jobs.live(job.id) is not None:
                await self.jobs.fail_job(job, str(exc))
            return False
        return True

    async def _pull(
        self, job: JobRecord, a: AttemptRecord, user: str | None
    ) -> dict[str, Any] | bool | None:
        """Get the node's image ready. Returns the `container` field (None: no image), or
        False when the attempt has ended (its exit was recorded) or must wait for the host."""
        try:
            spec = container_field(self.cluster, job, a)
        except ImageError as exc:
            await self._fail_attempt(a, f"image: {exc}")
            return False
        if spec is None:
            return None
        try:
            # A rootless podman pulls into the job's user's own store (run_as = "submitter").
            who = {"user": user} if user else {}
            reply = await self.pool.request(
                a.host, "image", attempt=a.attempt_id, container=spec,
                timeout=PULL_TIMEOUT_S + 60, **who,
            )  # fmt: skip
        except HostUnavailable:
            return False  # the reconnect path finds the attempt STARTING and launches it again
        except AgentError as exc:
            await self._fail_attempt(a, f"image: {exc.message} on {a.host}")
            return False
        if reply.get("pulled"):
            log.info("%s: pulled %s for %s", a.host, spec["image"], a.attempt_id)
        return spec

    async def _fail_attempt(self, a: AttemptRecord, reason: str) -> None:
        """End the attempt as an exit with `reason`: retry rules and multi-node rules apply."""
        now = time.time()
        event = {"attempt": a.attempt_id, "code": None, "signal": None, "reason": reason,
                 "timed_out": False, "started": None, "ended": now, "retryable": True}  # fmt: skip
        await self.jobs.on_exit(a.host, event)

    # ------------------------------------------------------------------ stop

    def kill(self, a: AttemptRecord, reason: str, grace_s: float | None = None) -> None:
        """Ask the attempt's host to kill it, in the background (nothing if unreachable)."""
        self.jobs.spawn(self._kill(a, reason, grace_s), f"kill-{a.attempt_id}")

    async def _kill(self, a: AttemptRecord, reason: str, grace_s: float | None) -> None:
        if grace_s is None:
            grace_s = self.settings.kill_grace_s
        with contextlib.suppress(HostUnavailable, AgentError):
            await self.pool.request(
                a.host, "kill", attempt=a.attempt_id, reason=reason, grace_s=grace_s
            )

    async def terminate(self, a: AttemptRecord, reason: str) -> bool:
        """Kill a live attempt now; whether its host found the process."""
        try:
            reply = await self.pool.request(
                a.host,
                "kill",
                attempt=a.attempt_id,
                reason=reason,
                grace_s=self.settings.kill_grace_s,
            )
        except (HostUnavailable, AgentError):
            return False
        return reply["found"]

    async def retime(self, a: AttemptRecord, timeout_s: float | None) -> bool:
        """Move a running attempt's time limit on its host (`update --time`); whether
        its host found the attempt's shepherd and told it."""
        try:
            reply = await self.pool.request(
                a.host, "retime", attempt=a.attempt_id, timeout_s=timeout_s
            )
        except (HostUnavailable, AgentError):
            return False
        return reply["found"]

    # ------------------------------------------------------------------ acks

    def ack(self, host: str, attempt: str) -> None:
        """Acknowledge exits in batches: one `ack` per host for every exit collected
        before the flush runs (a burst of exits costs a few messages,
        not one round trip each)."""
        pending = self._acks.setdefault(host, [])
        pending.append(attempt)
        if len(pending) == 1:
            self.jobs.spawn(self._ack(host), f"ack-{host}")

    async def _ack(self, host: str) -> None:
        await asyncio.sleep(0)  # let the exits already queued join this batch
        attempts = self._acks.pop(host, [])
        if not attempts:
            return
        # On failure they are listed again by the next hello, and acked then.
        with contextlib.suppress(HostUnavailable, AgentError):
            await self.pool.request(host, "ack", attempts=attempts)
