"""Collected logs: each attempt's output copied back to the controller when the job ends.

With `log_collection = "on_exit"` on the job's queue (or, unset there, on the
compute environment its first node ran in), the collector follows the job
service (an observer) and, when a job is final, reads every attempt's
stdout and stderr from its host through the pool's `read` op, up to the
inventory's `[retention] log_cap_mb` for the whole job (the start of each
stream is kept), and keeps them compressed in the store (store/logs.py). The
read model then answers `hpcbatch logs` from the store, so it keeps working
when the host is down, reinstalled or purged. Collection runs in the
background, off the path of the exit that ended the job.
"""

from __future__ import annotations

import contextlib
import logging
import time

from hpcbatch.controller.cluster import Cluster
from hpcbatch.controller.jobs import JobService
from hpcbatch.core.records import JobRecord
from hpcbatch.core.states import JobState
from hpcbatch.store.logs import CollectedLog, LogsTable
from hpcbatch.transport.pool import AgentError, HostPool, HostUnavailable

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
FINAL = (JobState.SUCCEEDED, JobState.FAILED)


def collection_of(cluster: Cluster, job: JobRecord) -> str:
    """The job's `log_collection`: its queue's, else its (first node's) compute
    environment's, else off."""
    inv = cluster.inventory
    queue = inv.queues.get(job.queue)
    if queue is None:
        return "off"
    if queue.log_collection is not None:
        return queue.log_collection
    host = job.attempts[0].host if job.attempts else None
    env = inv.compute_environments.get(cluster.compute_env_of(job.queue, host or ""))
    return (env.log_collection if env is not None else None) or "off"


class LogCollector:
    """Observer of the job service: collects a job's output when it is final."""

    def __init__(
        self, jobs: JobService, cluster: Cluster, pool: HostPool, logs: LogsTable, cap_bytes: int
    ) -> None:
        self._jobs = jobs
        self._cluster = cluster
        self._pool = pool
        self._logs = logs
        self._cap = cap_bytes
        self.collected = 0  # jobs collected since start (stats, tests)

    def changed(self, job: JobRecord) -> None:
        if job.state not in FINAL or not job.attempts:
            return
        if collection_of(self._cluster, job) != "on_exit":
            return
        self._jobs.spawn(self.collect(job), f"collect-logs-{job.id}")

    async def collect(self, job: JobRecord) -> None:
        """Read every attempt's streams (what can be read: a host down now keeps its
        part), and keep them in one write."""
        left = self._cap
        out: list[CollectedLog] = []
        for a in sorted(job.attempts, key=lambda x: (x.attempt, x.node)):
            for stream in ("stdout", "stderr"):
                if stream == "stderr" and a.stderr is not None and a.stderr == a.stdout:
                    continue  # one file for both: kept once, as stdout
                got = await self._read(a.host, a.attempt_id, stream, left)
                if got is None:
                    continue
                data, truncated = got
                left -= len(data)
                out.append(CollectedLog(job.id, a.attempt, a.node, stream, data, truncated))
        if out:
            await self._logs.put(out, time.time())
            self.collected += 1

    async def _read(
        self, host: str, attempt: str, stream: str, left: int
    ) -> tuple[bytes, bool] | None:
        """One stream's bytes (at most `left`) and whether it was cut; None if unreadable."""
        parts: list[bytes] = []
        got, offset = 0, 0
        with contextlib.suppress(HostUnavailable, AgentError):
            while True:
                reply = await self._pool.request(
                    host, "read", attempt=attempt, stream=stream, offset=offset,
                    limit=min(CHUNK, max(left - got, 1)),
                )  # fmt: skip
                data = reply["data"].encode()
                offset = reply["offset"]
                if got + len(data) > left:
                    parts.append(data[: max(left - got, 0)])
                    return b"".join(parts), True
                parts.append(data)
                got += len(data)
                if reply["done"] or not data:
                    return b"".join(parts), False
        log.info("logs of %s (%s) not collected from %s", attempt, stream, host)
        return (b"".join(parts), False) if parts else None
