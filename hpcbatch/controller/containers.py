"""Containerised jobs in the controller: refuse what no host can run, pull, then launch.

A job with an `image` goes through three steps here, the pure decisions being
in core/containers.py:

- at submit, `check_image` refuses the job when no host of its queue has a
  runtime for the image's kind (once every host's facts are known: "never",
  not "not now");
- at launch, `container_spec` chooses the node's runtime from its host's facts
  and its compute environment's order (a pure computation, used by
  launchspec.py), and the launcher sends the agent's `image` op while the job
  is STARTING: the agent pulls a missing registry image, sending `progress`
  events that `JobService.note_progress` shows in the job's reason column; a
  failed pull or a missing image ends the attempt like an exit with that
  reason, so the retry rules apply to it;
- the launch request then carries the `container` field, and the agent wraps
  the job in the runtime (transport/agent/containers.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpcbatch.core.containers import ImageError, ImageRef, choose_runtime, parse_image, unrunnable
from hpcbatch.core.records import AttemptRecord, JobRecord

if TYPE_CHECKING:
    from hpcbatch.controller.cluster import Cluster
    from hpcbatch.models import JobRequest

PULL_TIMEOUT_S = 3600.0
"""How long a pull may take before the attempt fails (large images on slow links)."""


def image_of(image: str | None) -> ImageRef | None:
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


def container_spec(
    cluster: Cluster, job: JobRecord, a: AttemptRecord, gpus: tuple[int, ...]
) -> dict[str, Any] | None:
    """The launch's `container` field for one node (its `gpus`), or None without an image.

    Raises ImageError when this node's host has no runtime for the image.
    """
    image = image_of(job.spec.image)
    if image is None:
        return None
    host = cluster.hosts[a.host]
    available = host.facts.runtimes if host.facts is not None else {}
    order = runtime_order(cluster, job.queue, a.host)
    chosen = choose_runtime(image, available, order)
    if chosen is None:
        raise ImageError(
            unrunnable(image, [(a.host, available, order)])
            or f"{a.host} cannot run the image {image.ref}"
        )
    runtime, exe = chosen
    return {
        "runtime": runtime,
        "exe": exe,
        "kind": image.kind,
        "image": image.ref,
        "mounts": list(job.spec.mounts),
        "gpus": list(gpus),
    }
