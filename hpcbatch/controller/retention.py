"""Retention: finished job records, their history and collected logs removed after an
age, attempt directories on the hosts after theirs (docs/operations.md).

A background loop (start/stop, woken by its interval or a `purge` request)
runs `purge`: the store removes the oldest finished jobs in batches of
`BATCH`, one short transaction each, yielding to the event loop between
batches, so the API and the job service keep answering while 100,000 jobs go
(store/retention.py); then each connected host's agent removes the attempt
directories acknowledged before the hosts' cutoff (the agent's `purge` op).
`hpcbatch purge --before DATE` (administrators) runs the same with a cutoff
of its own. After the rows, their space: the store gives it back in small
steps (SQLite's free pages a MiB at a time, PostgreSQL's VACUUM (ANALYZE) of
the purged tables), so the store's size stays bounded; `--vacuum` does it all
at once (a full VACUUM, holding the store meanwhile) and moves an older SQLite
file onto incremental reclaim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

from hpcbatch.controller.apiargs import Operation, PurgeArgs
from hpcbatch.controller.callers import ApiError, Caller
from hpcbatch.models import RetentionSpec
from hpcbatch.store.retention import RetentionTable
from hpcbatch.transport.pool import AgentError, HostPool, HostUnavailable

log = logging.getLogger(__name__)

BATCH = 100
DAY = 86_400.0
PAUSE_S = 0.002
FIRST_RUN_S = 30.0  # after start: the hosts are connected by then


class Retention:
    """The purge: on a schedule, and on an administrator's request."""

    def __init__(self, table: RetentionTable, pool: HostPool, spec: RetentionSpec) -> None:
        self._table = table
        self._pool = pool
        self.spec = spec
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one purge at a time
        self.last: dict[str, Any] | None = None

    def start(self) -> None:
        if self.spec.enabled and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        delay = FIRST_RUN_S
        while True:
            await asyncio.sleep(delay)
            now = time.time()
            try:
                await self.purge(now - self.spec.jobs_days * DAY, self.spec.attempt_dirs_days * DAY)
                delay = self.spec.interval_s
            except Exception:
                log.exception("retention: the purge failed; trying again later")
                delay = min(self.spec.interval_s, 60.0) * (1 + random.random())

    async def purge(
        self, before: float, dirs_older_than_s: float | None, *, vacuum: bool = False
    ) -> dict[str, Any]:
        """Jobs final before `before` (and delivered notifications) from the store, and
        their space reclaimed (`vacuum`: all at once); attempt directories acknowledged
        `dirs_older_than_s` ago or more from connected hosts."""
        async with self._lock:
            t0 = time.perf_counter()
            jobs = await self._purge_jobs(before)
            outbox = await self._table.purge_outbox(before)
            freed = await self._table.reclaim(full=vacuum) if jobs or outbox or vacuum else 0
            dirs = await self._purge_hosts(dirs_older_than_s)
            self.last = {
                "before": before, "jobs": jobs, "notifications": outbox,
                "attempt_dirs": dirs, "reclaimed_mb": round(freed / 2**20, 1),
                "seconds": round(time.perf_counter() - t0, 3), "finished": time.time(),
            }  # fmt: skip
            if jobs or dirs:
                log.info("retention: removed %d jobs, %d attempt directories", jobs, dirs)
            return self.last

    async def _purge_jobs(self, before: float) -> int:
        jobs = 0
        async for removed in self._table.batches(before, BATCH):
            jobs += removed
            await asyncio.sleep(PAUSE_S)  # requests waiting on the store go first
        return jobs

    async def _purge_hosts(self, older_than_s: float | None) -> int:
        if older_than_s is None:
            return 0
        removed = 0
        for host in list(self._pool):
            if not self._pool.connected(host):
                continue  # its directories go at a later run
            with contextlib.suppress(HostUnavailable, AgentError):
                reply = await self._pool.request(host, "purge", older_than_s=older_than_s)
                removed += len(reply["removed"])
        return removed

    def table(self) -> dict[str, Operation[Any]]:
        return {"purge": Operation(PurgeArgs, self.purge_request)}

    async def purge_request(self, args: PurgeArgs, caller: Caller) -> dict[str, Any]:
        """The API's `purge` (administrators): jobs that ended before `before`, and with
        `hosts` the attempt directories acknowledged before it."""
        before, hosts, vacuum = args.before, bool(args.hosts), bool(args.vacuum)
        if not caller.admin:
            raise ApiError("forbidden", "purge: only administrators remove job records")
        if before is None:
            raise ApiError("bad_request", "purge: before (seconds since the epoch) is required")
        if before > time.time():
            raise ApiError("bad_request", "purge: before is in the future")
        dirs = max(time.time() - before, 0.0) if hosts else None
        return await self.purge(before, dirs, vacuum=vacuum)
