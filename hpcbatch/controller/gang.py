"""Launching a job's nodes, and failing a multi-node job fast when a node is lost.

Every job goes through here for its launch request: what each node runs
(node ranges, the holder of launch mode `main`), its environment (core.jobenv
plus the MPI settings of core.gang), and the hostfiles the agent writes into
the attempt directory. A multi-node job's nodes are launched in two waves:
every other node at once, then the main node, so that when the main node's
script starts `mpirun` (or srun) the nodes it reaches through the relay are
already there.

The decisions are pure (core.gang); JobService applies them under its lock.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Any

from hpcbatch.core import gang
from hpcbatch.core.directives import expand_output_pattern
from hpcbatch.core.jobenv import NodeContext, job_environment
from hpcbatch.core.records import AttemptRecord, AttemptState, JobRecord

if TYPE_CHECKING:
    from hpcbatch.controller.jobs import JobService

log = logging.getLogger(__name__)

HOSTFILE = "hostfile"
MPICH_HOSTFILE = "hostfile.mpich"
FILE_ENV = {
    "HPCBATCH_HOSTFILE": HOSTFILE,
    "HPCBATCH_HOSTFILE_MPICH": MPICH_HOSTFILE,
    "OMPI_MCA_orte_default_hostfile": HOSTFILE,
    "HYDRA_HOST_FILE": MPICH_HOSTFILE,
}


def is_gang(job: JobRecord) -> bool:
    return int(job.request.get("nodes") or 1) > 1


async def launch_all(jobs: JobService, job: JobRecord, attempts: list[AttemptRecord]) -> None:
    """Launch a job's node attempts: the non-main nodes together, then the main node."""
    main = gang.main_node(job.request)
    first = [a for a in attempts if a.node != main]
    last = [a for a in attempts if a.node == main]
    if first:
        await asyncio.gather(*(jobs.launch_one(job, a) for a in first))
        if any(a.state == AttemptState.STARTING for a in first) or job.id not in jobs.active:
            # A node did not start: its launch was refused (the job failed) or its
            # host is gone (the job fails: see host_lost).
            return
    for a in last:
        await jobs.launch_one(job, a)


def node_context(jobs: JobService, job: JobRecord, a: AttemptRecord) -> NodeContext:
    attempts = sorted(jobs.current_attempts(job), key=lambda x: x.node)
    hosts = jobs.cluster.hosts
    req = job.request
    spec = gang.node_spec(req, a.node)
    gpus = a.gpus[: spec.gpus] if len(job.attempts) > 1 else a.gpus
    ntasks = req.get("ntasks")
    if ntasks is None and req.get("ntasks_per_node"):
        ntasks = int(req["ntasks_per_node"]) * len(attempts)
    return NodeContext(
        job_id=job.id,
        job_name=job.name,
        user=job.user,
        queue=job.queue,
        compute_env=jobs.cluster.compute_env_of(job.queue, a.host),
        attempt=job.attempt,
        node_index=a.node,
        node_names=tuple(x.host for x in attempts),
        node_addrs=tuple(hosts[x.host].spec.address or x.host for x in attempts),
        main_node_index=gang.main_node(req),
        cpus_on_node=a.cpus,
        gpus_on_node=gpus,
        host_has_gpus=bool(hosts[a.host].gpus),
        submit_dir=req.get("submit_dir"),
        time_limit_s=req.get("time_limit_s"),
        slots=tuple(gang.node_slots(req, x.cpus) for x in attempts),
        ntasks=int(ntasks) if ntasks else None,
        launch_mode=gang.launch_mode(req),
        array_job_id=job.array_parent,
        array_index=job.array_index,
        array_count=req.get("array_count"),
        array_min=req.get("array_min"),
        array_max=req.get("array_max"),
    )


def node_environment(jobs: JobService, job: JobRecord, a: AttemptRecord) -> dict[str, str]:
    """MPI settings, then the user's variables, then hpcbatch's own (which win)."""
    ctx = node_context(jobs, job, a)
    facts = jobs.cluster.hosts[a.host].facts
    as_root = facts is not None and facts.user == "root"
    user_env = dict(job.request.get("env") or {})
    user_env.update(gang.node_spec(job.request, a.node).env)
    return {**gang.mpi_environment(ctx.node_addrs, as_root), **job_environment(ctx, user_env)}


def output_path(job: JobRecord, a: AttemptRecord, pattern: str | None) -> str | None:
    if not pattern:
        return None
    return expand_output_pattern(
        pattern,
        job_id=job.id,
        array_job_id=job.array_parent,
        array_index=job.array_index,
        job_name=job.name,
        node_name=a.host,
        user=job.user,
    )


def launch_fields(jobs: JobService, job: JobRecord, a: AttemptRecord) -> dict[str, Any]:
    """The `launch` request for one node (everything but attempt id and timing)."""
    req = job.request
    spec = gang.node_spec(req, a.node)
    ctx = node_context(jobs, job, a)
    stdout = output_path(job, a, req.get("output"))
    stderr = output_path(job, a, req.get("error")) or stdout
    if a.node != ctx.main_node_index and not _per_node(req):
        # The main node owns the job's output files: another node opening them
        # (truncating) would lose what the main node wrote. Theirs stay in the
        # attempt directory (`hpcbatch logs --node N`).
        stdout = stderr = None
    slots = ctx.slots
    return {
        **warning_fields(req),
        # A retried job's later attempts add to its output files instead of
        # truncating them: every attempt's output is kept.
        "append": job.attempt > 1,
        "script": spec.script,
        "args": list(spec.args),
        "env": node_environment(jobs, job, a),
        "files": {
            HOSTFILE: gang.openmpi_hostfile(ctx.node_addrs, slots),
            MPICH_HOSTFILE: gang.mpich_hostfile(ctx.node_addrs, slots),
        },
        "file_env": FILE_ENV,
        "cwd": req.get("workdir"),
        "stdout": stdout,
        "stderr": stderr,
    }


def warning_fields(req: dict[str, Any]) -> dict[str, Any]:
    """`--signal`: the agent sends the signal `before_s` before the time limit."""
    warn = req.get("warn_signal")
    if not warn or not req.get("time_limit_s"):
        return {}
    return {
        "warn_signal": int(signal.Signals[f"SIG{warn['name']}"]),
        "warn_before_s": float(warn.get("before_s", 60)),
        "warn_batch_only": bool(warn.get("batch_only")),
    }


def _per_node(req: dict[str, Any]) -> bool:
    """Whether the output patterns name the node (`%N`), so nodes do not share files."""
    out, err = req.get("output"), req.get("error")
    return (out is None or "%N" in out) and (err is None or "%N" in err)


async def host_lost(jobs: JobService, host: str, reason: str) -> None:
    """A host's link went down: every multi-node job with a node there ends now.

    A single-node job keeps running (its shepherd does not need the link; the exit
    is collected when the host returns); a multi-node job cannot: its MPI ranks
    or relayed processes lost their peers, and its other nodes must be released.
    It is a host failure: the whole job is retried if its retry strategy says so.
    """
    for job, a in jobs.attempts_on(host):
        if is_gang(job):
            why = f"host {host} lost (node {a.node}): {reason}"
            await jobs.fail_job(job, why, host_failure=True)


def exit_outcome(job: JobRecord, a: AttemptRecord, state: str, reason: str) -> gang.NodeExit:
    return gang.node_exit(job.request, a.node, a.host, state, reason)


def others_reason(job: JobRecord, a: AttemptRecord, reason: str) -> str:
    if a.node == gang.main_node(job.request):
        return f"stopped: the main node ({a.host}) ended: {reason}"
    return f"stopped: {reason}"
