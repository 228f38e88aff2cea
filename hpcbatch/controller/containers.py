"""Containerised jobs in the controller: refuse what no host can run, pull, then launch.

A job with an `image` goes through three steps here, the pure decisions being
in core/containers.py:

- at submit, `check_image` refuses the job when no host of its queue has a
  runtime for the image's kind (once every host's facts are known: "never",
  not "not now");
- at launch, `container_spec` chooses the node's runtime from its host's facts
  and its compute environment's order, and `prepare` sends the agent's `image`
  op while the job is STARTING: the agent pulls a missing registry image,
  sending `progress` events that `on_progress` shows in the job's reason
  column; a failed pull or a missing image ends the attempt like an exit with
  that reason, so the retry rules apply to it;
- the launch request then carries the `container` field, and the agent wraps
  the job in the runtime (transport/agent/containers.py).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from hpcbatch.core.containers import ImageError, ImageRef, choose_runtime, parse_image, unrunnable
from hpcbatch.core.records import AttemptRecord, JobRecord, parse_attempt_id
from hpcbatch.transport.link import AgentError, HostLink, HostUnavailable

if TYPE_CHECKING:
    from hpcbatch.controller.cluster import Cluster
    from hpcbatch.controller.jobs import JobService
    from hpcbatch.models import JobRequest

log = logging.getLogger(__name__)

PULL_TIMEOUT_S = 3600.0
"""How long a pull may take before the attempt fails (large images on slow links)."""


def image_of(request: dict[str, Any]) -> ImageRef | None:
    image = request.get("image")
    if not image:
        return None
    try:
        return parse_image(str(image))
    except ImageError:
        return None  # checked at submit: only requests stored before a change could differ


def runtime_order(cluster: Cluster, queue: str, host: str) -> tuple[str, ...] | None:
    ce = cluster.inventory.compute_environments.get(cluster.compute_env_of(queue, host))
    return ce.container_runtimes if ce is not None else None


def check_image(cluster: Cluster, req: JobRequest, queue: str) -> str | None:
    """Why no host of `queue` could ever run the job's image (None: some can, or unknown yet)."""
    if not req.image:
        return None
    image = parse_image(req.image)
    hosts = [cluster.hosts[n] for n in cluster.queue_hosts(queue)]
    if not all(h.facts is not None for h in hosts):
        return None
    return unrunnable(
        image,
        (
            (h.spec.name, h.facts.runtimes, runtime_order(cluster, queue, h.spec.name))
            for h in hosts
            if h.facts is not None
        ),
    )


def container_spec(jobs: JobService, job: JobRecord, a: AttemptRecord) -> dict[str, Any] | None:
    """The launch's `container` field for one node, or None for a job without an image.

    Raises ImageError when this node's host has no runtime for the image.
    """
    image = image_of(job.request)
    if image is None:
        return None
    host = jobs.cluster.hosts[a.host]
    available = host.facts.runtimes if host.facts is not None else {}
    order = runtime_order(jobs.cluster, job.queue, a.host)
    chosen = choose_runtime(image, available, order)
    if chosen is None:
        raise ImageError(
            unrunnable(image, [(a.host, available, order)])
            or f"{a.host} cannot run the image {image.ref}"
        )
    runtime, exe = chosen
    from hpcbatch.controller.gang import node_context  # (gang imports the job service's types)

    gpus = list(node_context(jobs, job, a).gpus_on_node)
    return {
        "runtime": runtime,
        "exe": exe,
        "kind": image.kind,
        "image": image.ref,
        "mounts": list(job.request.get("mounts") or []),
        "gpus": gpus,
    }


async def prepare(
    jobs: JobService, job: JobRecord, a: AttemptRecord, link: HostLink
) -> dict[str, Any] | bool | None:
    """Get the node's image ready. Returns the `container` field (None: no image), or
    False when the attempt has ended (its exit was recorded) or must wait for the host."""
    try:
        spec = container_spec(jobs, job, a)
    except ImageError as exc:
        await _fail_attempt(jobs, job, a, f"image: {exc}")
        return False
    if spec is None:
        return None
    try:
        reply = await link.request(
            "image", attempt=a.attempt_id, container=spec, timeout=PULL_TIMEOUT_S + 60
        )
    except HostUnavailable:
        return False  # the reconnect path finds the attempt STARTING and launches it again
    except AgentError as exc:
        await _fail_attempt(jobs, job, a, f"image: {str(exc).split(': ', 2)[-1]} on {a.host}")
        return False
    if reply.get("pulled"):
        log.info("%s: pulled %s for %s", a.host, spec["image"], a.attempt_id)
    return spec


async def _fail_attempt(jobs: JobService, job: JobRecord, a: AttemptRecord, reason: str) -> None:
    """End the attempt as an exit with `reason`: retry rules and multi-node rules apply."""
    now = time.time()
    event = {"attempt": a.attempt_id, "code": None, "signal": None, "reason": reason,
             "timed_out": False, "started": None, "ended": now, "retryable": True}  # fmt: skip
    await jobs.on_exit(a.host, event)


def on_progress(jobs: JobService, host: str, event: dict[str, Any]) -> None:
    """A pull's progress line: shown as the STARTING job's reason (not stored: it is
    transient, and the pull's whole output goes to the top of the job's stderr)."""
    try:
        job_id, attempt, _node = parse_attempt_id(str(event.get("attempt")))
    except ValueError:
        return
    job = jobs.active.get(job_id)
    if job is None or job.attempt != attempt or not job.state.is_active:
        return
    text = str(event.get("text") or "")[:200]
    job.reason = f"pulling image on {host}: {text}" if text else f"pulling image on {host}"
    jobs.publish_summary(job)
