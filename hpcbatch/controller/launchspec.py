"""What a node is launched with: the `launch` request, computed and nothing changed.

Every job's launch request is built here from the cluster (hosts' addresses,
facts, compute environments) and the job's current attempts: what each node
runs (node ranges, the holder of launch mode `main`), its environment
(core.jobenv plus the MPI settings of core.gang), the hostfiles the agent
writes into the attempt directory, the output paths, the `--signal` warning
and the container command. It reads and returns; sending the request and
recording what came of it is the launcher's (controller/launcher.py).
"""

from __future__ import annotations

import signal
from typing import Any

from hpcbatch.controller.cluster import Cluster
from hpcbatch.controller.containers import container_spec
from hpcbatch.core import gang
from hpcbatch.core.directives import expand_output_pattern
from hpcbatch.core.jobenv import NodeContext, job_environment
from hpcbatch.core.jobspec import JobSpec
from hpcbatch.core.records import AttemptRecord, JobRecord, current_attempts
from hpcbatch.core.runas import DEFAULT_UMASK, launch_user

HOSTFILE = "hostfile"
MPICH_HOSTFILE = "hostfile.mpich"
FILE_ENV = {
    "HPCBATCH_HOSTFILE": HOSTFILE,
    "HPCBATCH_HOSTFILE_MPICH": MPICH_HOSTFILE,
    "OMPI_MCA_orte_default_hostfile": HOSTFILE,
    "HYDRA_HOST_FILE": MPICH_HOSTFILE,
}


def node_context(cluster: Cluster, job: JobRecord, a: AttemptRecord) -> NodeContext:
    attempts = sorted(current_attempts(job), key=lambda x: x.node)
    hosts = cluster.hosts
    req = job.spec
    spec = gang.node_spec(req.raw, a.node)
    gpus = a.gpus[: spec.gpus] if len(job.attempts) > 1 else a.gpus
    ntasks = req.ntasks
    if ntasks is None and req.ntasks_per_node:
        ntasks = req.ntasks_per_node * len(attempts)
    return NodeContext(
        job_id=job.id,
        job_name=job.name,
        user=job.user,
        queue=job.queue,
        compute_env=cluster.compute_env_of(job.queue, a.host),
        attempt=job.attempt,
        node_index=a.node,
        node_names=tuple(x.host for x in attempts),
        node_addrs=tuple(hosts[x.host].spec.address or x.host for x in attempts),
        main_node_index=req.main_node,
        cpus_on_node=a.cpus,
        gpus_on_node=gpus,
        host_has_gpus=bool(hosts[a.host].gpus),
        submit_dir=req.submit_dir,
        time_limit_s=req.time_limit_s,
        slots=tuple(gang.node_slots(req.raw, x.cpus) for x in attempts),
        ntasks=int(ntasks) if ntasks else None,
        launch_mode=req.launch_mode,
        array_job_id=job.array_parent,
        array_index=job.array_index,
        array_count=req.array_count,
        array_min=req.array_min,
        array_max=req.array_max,
    )


def node_environment(
    cluster: Cluster, job: JobRecord, a: AttemptRecord, ctx: NodeContext
) -> dict[str, str]:
    """MPI settings, then the user's variables, then hpcbatch's own (which win)."""
    facts = cluster.hosts[a.host].facts
    as_root = facts is not None and facts.user == "root"
    user_env = dict(job.spec.env)
    user_env.update(gang.node_spec(job.spec.raw, a.node).env)
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


def launch_fields(cluster: Cluster, job: JobRecord, a: AttemptRecord) -> dict[str, Any]:
    """The `launch` request for one node (everything but attempt id, timing, container)."""
    req = job.spec
    spec = gang.node_spec(req.raw, a.node)
    ctx = node_context(cluster, job, a)
    stdout = output_path(job, a, req.output)
    stderr = output_path(job, a, req.error) or stdout
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
        "env": node_environment(cluster, job, a, ctx),
        "files": {
            HOSTFILE: gang.openmpi_hostfile(ctx.node_addrs, slots),
            MPICH_HOSTFILE: gang.mpich_hostfile(ctx.node_addrs, slots),
        },
        "file_env": FILE_ENV,
        "cwd": req.workdir,
        "stdout": stdout,
        "stderr": stderr,
        "limits": limits_field(a, bool(cluster.hosts[a.host].gpus)),
        "umask": DEFAULT_UMASK if req.umask is None else req.umask,
        **_user_field(cluster, job, a),
        # `hpcbatch run`: the main node's job reads what the client sends (`job_input`)
        # (its first attempt only: `run` sent its input, EOF included, to that one; a
        # retried or requeued attempt reads /dev/null rather than wait for input forever)
        **(
            {"stdin": True}
            if req.stdin and a.node == ctx.main_node_index and job.attempt == 1
            else {}
        ),
    }


def limits_field(a: AttemptRecord, host_gpus: bool = False) -> dict[str, Any]:
    """What the agent holds this node to (its cgroup, where the host has one): the
    memory and CPUs allocated here, the core numbers the scheduler pinned it to and, on
    a host with GPUs, its GPUs. An exclusive job's allocation is the whole host."""
    out: dict[str, Any] = {
        "memory_bytes": a.memory_mb * 1024 * 1024 if a.memory_mb > 0 else None,
        "cpus": a.cpus if a.cpus > 0 else None,
    }
    if a.cores:  # its own cores: a cpuset on the host, and the job's CPU list
        out["cores"] = list(a.cores)
    if host_gpus:  # its own GPUs: the others' devices denied, its own sampled
        out["gpus"] = list(a.gpus)
    return out


def _user_field(cluster: Cluster, job: JobRecord, a: AttemptRecord) -> dict[str, Any]:
    """`user`: on a host that runs jobs as their submitter, whose account runs it."""
    user = launch_user(cluster.inventory.hosts[a.host].run_as, job.user)
    return {} if user is None else {"user": user}


def container_field(cluster: Cluster, job: JobRecord, a: AttemptRecord) -> dict[str, Any] | None:
    """The launch's `container` field for one node, or None for a job without an image.

    Raises ImageError when this node's host has no runtime for the image.
    """
    if not job.spec.image:
        return None
    gpus = node_context(cluster, job, a).gpus_on_node
    return container_spec(cluster, job, a, gpus)


def warning_fields(req: JobSpec) -> dict[str, Any]:
    """`--signal`: the agent sends the signal `before_s` before the time limit."""
    warn = req.warn_signal
    if warn is None or not req.time_limit_s:
        return {}
    return {
        "warn_signal": int(signal.Signals[f"SIG{warn.name}"]),
        "warn_before_s": warn.before_s,
        "warn_batch_only": warn.batch_only,
    }


def _per_node(req: JobSpec) -> bool:
    """Whether the output patterns name the node (`%N`), so nodes do not share files."""
    out, err = req.output, req.error
    return (out is None or "%N" in out) and (err is None or "%N" in err)
