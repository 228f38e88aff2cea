"""Who a job runs as on its hosts, and who may submit to hosts that run jobs as their user.

Pure decisions (no I/O): the submit path asks `submit_refusal`, the launch
path `launch_user`. On a host with `run_as = "submitter"` every process of a
job runs under the submitting user's account there; root and system accounts
(uid below the inventory's `min_uid`) are refused at submit, as Slurm refuses
root jobs by default, so that no job of the shared cluster runs privileged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

LOGIN = "login"
SUBMITTER = "submitter"
DEFAULT_UMASK = 0o077
"""A job's umask on its hosts when the submitter's was not sent (docs/security.md)."""


@dataclass(frozen=True, slots=True)
class HostRunAs:
    """A host's run-as setting, as the decisions need it."""

    name: str
    run_as: str
    min_uid: int


def submit_refusal(uid: int, user: str, queue: str, hosts: Iterable[HostRunAs]) -> str | None:
    """Why a user may not submit to `queue` (None: they may). Only hosts that run jobs
    as their submitter refuse anyone; a personal cluster (`login`) takes everyone."""
    for host in hosts:
        if host.run_as != SUBMITTER:
            continue
        if uid == 0:
            return (
                f"refused: jobs of queue {queue} run as their submitter (host {host.name}: "
                'run_as = "submitter") and root may not submit them; submit as your own user'
            )
        if uid < host.min_uid:
            return (
                f"refused: jobs of queue {queue} run as their submitter (host {host.name}) "
                f"and {user} (uid {uid}) is below the inventory's min_uid {host.min_uid}"
            )
    return None


def launch_user(run_as: str, user: str) -> str | None:
    """The `user` field of a launch on a host: the job's user where the host runs jobs
    as their submitter, else None (the job runs as the agent's login)."""
    return user if run_as == SUBMITTER else None
