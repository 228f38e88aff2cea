"""The seam between the job service and the hosts: what the one writer of job state asks.

`JobService` decides and records; work on the hosts (launching a started job's
nodes, killing attempts, terminating a cancelled job, acknowledging collected
exits) goes through this interface, which controller/launcher.py implements
over the host links. Defined apart from both so that neither imports the other
for it: the launcher imports the job service (to report back through its
intents), never the reverse.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from hpcbatch.core.records import AttemptRecord, JobRecord


class HostActions(Protocol):
    """What the job service asks of the hosts (controller/launcher.py does it)."""

    def launch(self, job: JobRecord, only: Iterable[AttemptRecord] | None = None) -> None: ...

    def kill(self, a: AttemptRecord, reason: str, grace_s: float | None = None) -> None: ...

    async def terminate(self, a: AttemptRecord, reason: str) -> bool: ...

    def ack(self, host: str, attempt: str) -> None: ...
