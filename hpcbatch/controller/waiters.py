"""Callers waiting for jobs to become final (the API's `wait`, log followers).

Kept apart from the job records: the job service resolves a job's waiters
when it finishes it; a waiter that gives up (timeout, client gone) leaves
nothing behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable


class Waiters:
    """Futures per job id, resolved when the job becomes final."""

    def __init__(self) -> None:
        self._futures: dict[int, list[asyncio.Future[None]]] = {}

    def resolve(self, job_id: int) -> None:
        for fut in self._futures.pop(job_id, []):
            if not fut.done():
                fut.set_result(None)

    async def wait(
        self, job_ids: Iterable[int], live: Callable[[int], bool], timeout: float | None
    ) -> None:
        """Wait until every job of `job_ids` that is `live` now has been resolved."""
        job_ids = list(job_ids)
        futures = []
        loop = asyncio.get_running_loop()
        for job_id in job_ids:
            if live(job_id):
                fut: asyncio.Future[None] = loop.create_future()
                self._futures.setdefault(job_id, []).append(fut)
                futures.append(fut)
        if not futures:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*futures), timeout)
        finally:
            # A waiter that gave up (timeout, client gone) leaves nothing behind:
            # a log follower waits in short slices for as long as a job runs.
            for job_id in job_ids:
                left = [f for f in self._futures.get(job_id, []) if not f.done()]
                if left:
                    self._futures[job_id] = left
                else:
                    self._futures.pop(job_id, None)
