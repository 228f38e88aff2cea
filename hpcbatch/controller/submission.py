"""The API's `submit`: a request checked, then accepted by the job service.

A request is validated (pydantic), its queue resolved, and refused at once if
no host of the queue could ever run it ("never", not "not now"). A plain job
is accepted RUNNABLE; an array is accepted in one write (a parent row with
the request, one small row per child); a job with dependencies starts PENDING
and the `DependencyTracker` releases it (RUNNABLE) or fails it when they settle.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from pydantic import ValidationError

from hpcbatch.controller import containers
from hpcbatch.controller.arrays import ArrayTracker
from hpcbatch.controller.callers import ApiError, Caller, format_validation_error
from hpcbatch.controller.deps import DependencyTracker
from hpcbatch.controller.jobs import JobService
from hpcbatch.controller.secrets import SecretService
from hpcbatch.controller.snapshot import user_limits
from hpcbatch.core.arrays import ArraySpec, ArraySpecError, parse_spec
from hpcbatch.core.dependencies import Dependency, DependencyError, parse
from hpcbatch.core.gang import gang_shape
from hpcbatch.core.hostlist import expand
from hpcbatch.core.jobcontrol import held_reason
from hpcbatch.core.jobspec import JobSpec
from hpcbatch.core.limits import never_within
from hpcbatch.core.runas import HostRunAs, submit_refusal
from hpcbatch.core.scheduler import JobView, infeasible
from hpcbatch.core.states import JobState
from hpcbatch.models import JobRequest
from hpcbatch.store.db import NewJob, Store

WAITING = "Resources: waiting for the scheduler"


class Submitter:
    """The API's `submit`: plain jobs, arrays and dependent jobs."""

    def __init__(
        self,
        jobs: JobService,
        arrays: ArrayTracker,
        deps: DependencyTracker,
        store: Store,
        secrets: SecretService | None = None,
    ) -> None:
        self.jobs = jobs
        self.arrays = arrays
        self.deps = deps
        self.store = store
        self.secrets = secrets

    async def load(self) -> None:
        """After `JobService.load`: child counts of each live parent, dependency watches."""
        for parent_id in list(self.arrays.parents):
            done = await self.store.jobs.list_jobs(
                array_parents=[parent_id],
                states=[str(JobState.SUCCEEDED), str(JobState.FAILED)],
                limit=1_000_000,
            )
            self.arrays.seed(parent_id, Counter(j.state for j in done))
        for job in self.jobs.live_jobs():
            self.arrays.child_changed(job)
            if job.state == JobState.PENDING and job.spec.dependency:  # not only held
                self.deps.watch(job)
        await self.arrays.flush()
        await self.deps.settle()

    def check_request(self, raw: Any) -> tuple[JobRequest, str]:
        if not isinstance(raw, dict):
            raise ApiError("bad_request", "request must be an object")
        try:
            req = JobRequest.model_validate(raw)
        except ValidationError as exc:
            raise ApiError("bad_request", format_validation_error(exc)) from None
        cluster = self.jobs.cluster
        inv = cluster.inventory
        queue = req.queue or inv.default_queue
        if queue not in inv.queues:
            known = ", ".join(sorted(inv.queues))
            raise ApiError("bad_request", f"unknown queue {queue!r} (queues: {known})")
        if req.fabric is None and inv.queues[queue].fabric is not None:
            req = req.model_copy(update={"fabric": inv.queues[queue].fabric})
        named = len(expand(req.nodelist)) if req.nodelist else 0
        if named > req.nodes:  # as Slurm: -w with more hosts than -N asks for them all
            req = req.model_copy(update={"nodes": named})
        # Disabled compute environments count: enabled again later, they run it.
        names = inv.queue_hosts(queue, include_disabled=True)
        hosts = [cluster.hosts[n] for n in names]
        known_hosts = [h.capacity_view() for h in hosts if h.known]
        cpus, memory_mb, gpus = gang_shape(req.model_dump(mode="json"))
        target = JobSpec.from_json(req.model_dump(mode="json")).target
        view = JobView(id=0, queue=queue, cpus=cpus, memory_mb=memory_mb, gpus=gpus,
                       nodes=req.nodes, exclusive=req.exclusive, fabric=req.fabric,
                       target=target)  # fmt: skip
        # "Never" needs every host's size; while some are not yet probed, only "not now".
        if len(known_hosts) == len(hosts):
            why = infeasible(view, known_hosts)
            if why is not None:
                raise ApiError("infeasible", f"refused: {why}")
        why = never_within(view, queue, user_limits(inv.queues[queue]))
        if why is not None:
            raise ApiError("infeasible", f"refused: {why}")
        why = containers.check_image(cluster, req, queue)
        if why is not None:
            raise ApiError("infeasible", f"refused: {why}")
        return req, queue

    async def check_secrets(self, req: JobRequest, caller: Caller) -> None:
        """The secrets the job names exist and its user may use them (controller/secrets.py)."""
        if req.secrets:
            if self.secrets is None:
                raise ApiError("bad_request", "this controller keeps no secrets")
            await self.secrets.check_use(req.secrets, caller.user, caller.uid)

    def check_caller(self, queue: str, caller: Caller) -> None:
        """Root and system accounts may not submit to hosts that run jobs as their user."""
        cluster = self.jobs.cluster
        hosts = (cluster.inventory.hosts[n] for n in cluster.queue_hosts(queue))
        views = (HostRunAs(h.name, h.run_as, h.min_uid) for h in hosts)
        why = submit_refusal(caller.uid, caller.user, queue, views)
        if why is not None:
            raise ApiError("bad_request", why)

    async def submit(self, raw: Any, caller: Caller) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise ApiError("bad_request", "request must be an object")
        array_text = raw.get("array")
        dep_text = raw.get("dependency")
        if isinstance(raw.get("nice"), int) and raw["nice"] < 0 and not caller.admin:
            raise ApiError("forbidden", "nice: a negative nice is for administrators")
        if not array_text and not dep_text:
            req, queue = self.check_request(raw)
            self.check_caller(queue, caller)
            await self.check_secrets(req, caller)
            new = _new_job(req, queue, caller, None)
            held = held_reason(new.hold)
            job = await self.jobs.accept(
                new, JobState.PENDING if held else JobState.RUNNABLE, held or WAITING
            )
            self.jobs.wake_scheduler()
            return {"job_id": job.id}
        req, queue = self.check_request(raw)
        self.check_caller(queue, caller)
        await self.check_secrets(req, caller)
        spec = _array_spec(array_text)
        dependencies: list[Dependency] = []
        if dep_text:
            try:
                dependencies = list(parse(str(dep_text)))
            except DependencyError as exc:
                raise ApiError("bad_request", f"--dependency: {exc}") from None
            await self.deps.check_targets(dependencies, spec)
        new = _new_job(req, queue, caller, spec)
        state = JobState.PENDING if dependencies or new.hold else JobState.RUNNABLE
        reason = held_reason(new.hold) or ("Dependency: waiting" if dependencies else WAITING)
        if spec is None:
            records = [await self.jobs.accept(new, state, reason)]
            job_id = records[0].id
        else:
            parent, records = await self.jobs.accept_array(
                new, spec.indices, state, reason, quiet=not dependencies
            )
            job_id = parent.id
            if not dependencies:
                self.arrays.children_added(parent.id, [r.id for r in records], state)
        if dependencies:
            for rec in records:
                self.deps.watch(rec)
        await self.arrays.flush()
        if dependencies:
            await self.deps.settle()
        else:
            self.jobs.wake_scheduler()
        out: dict[str, Any] = {"job_id": job_id}
        if spec is not None:
            out["array_size"] = len(spec.indices)
        return out


def _array_spec(text: Any) -> ArraySpec | None:
    if not text:
        return None
    try:
        return parse_spec(str(text))
    except ArraySpecError as exc:
        raise ApiError("bad_request", f"--array: {exc}") from None


def _new_job(req: JobRequest, queue: str, caller: Caller, spec: ArraySpec | None) -> NewJob:
    """The job as it is stored: the validated request as JSON, with the queue chosen
    and, for an array, its throttle and index range."""
    request = req.model_dump(mode="json")
    request["queue"] = queue
    if spec is not None:
        request["array_throttle"] = spec.throttle
        request["array_count"] = len(spec.indices)
        request["array_min"] = min(spec.indices)
        request["array_max"] = max(spec.indices)
    hold = "user" if req.hold else None  # --hold: held by its owner until released
    return NewJob(req.name, caller.user, caller.uid, queue, request, time.time(), hold)
