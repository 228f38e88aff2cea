"""The environment a job attempt sees on each of its nodes.

hpcbatch sets its own names (HPCBATCH_*), AWS Batch's (AWS_BATCH_*) and the
common Slurm ones (SLURM_*), so scripts written for either run unchanged, plus
the PyTorch rendezvous names for multi-node jobs. Pure: the controller calls it
with what it knows and sends the result with the launch.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcbatch.core.gang import tasks_per_node
from hpcbatch.core.hostlist import compress

MASTER_PORT_BASE = 29500


@dataclass(frozen=True, slots=True)
class NodeContext:
    """Everything about one node of one attempt that its environment depends on."""

    job_id: int
    job_name: str
    user: str
    queue: str
    compute_env: str
    attempt: int
    node_index: int
    node_names: tuple[str, ...]
    node_addrs: tuple[str, ...]
    main_node_index: int
    cpus_on_node: int
    gpus_on_node: tuple[int, ...]
    host_has_gpus: bool
    submit_dir: str | None
    time_limit_s: int | None = None
    array_job_id: int | None = None
    array_index: int | None = None
    # The whole array: how many children, the lowest and highest index.
    array_count: int | None = None
    array_min: int | None = None
    array_max: int | None = None
    slots: tuple[int, ...] = ()  # MPI slots per node (see core.gang.node_slots)
    ntasks: int | None = None  # --ntasks as asked, if it was
    launch_mode: str = "main"


def job_environment(ctx: NodeContext, user_env: dict[str, str]) -> dict[str, str]:
    """User variables first, then ours: a job cannot spoof its own identity variables."""
    env = dict(user_env)
    num_nodes = len(ctx.node_names)
    main_addr = ctx.node_addrs[ctx.main_node_index]
    nodelist = compress(ctx.node_names)
    ours = {
        "HPCBATCH_JOB_ID": str(ctx.job_id),
        "HPCBATCH_JOB_NAME": ctx.job_name,
        "HPCBATCH_NODE_INDEX": str(ctx.node_index),
        "HPCBATCH_NUM_NODES": str(num_nodes),
        "HPCBATCH_MAIN_NODE_INDEX": str(ctx.main_node_index),
        "HPCBATCH_MAIN_NODE_ADDR": main_addr,
        "HPCBATCH_NODE_ADDRS": ",".join(ctx.node_addrs),
        "HPCBATCH_NODE_NAMES": ",".join(ctx.node_names),
        "HPCBATCH_GPUS_PER_NODE": str(len(ctx.gpus_on_node)),
        "HPCBATCH_ATTEMPT": str(ctx.attempt),
        "HPCBATCH_QUEUE": ctx.queue,
        "AWS_BATCH_JOB_ID": str(ctx.job_id),
        "AWS_BATCH_JOB_NODE_INDEX": str(ctx.node_index),
        "AWS_BATCH_JOB_NUM_NODES": str(num_nodes),
        "AWS_BATCH_JOB_MAIN_NODE_INDEX": str(ctx.main_node_index),
        "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS": main_addr,
        "AWS_BATCH_JOB_ATTEMPT": str(ctx.attempt),
        "AWS_BATCH_JQ_NAME": ctx.queue,
        "AWS_BATCH_CE_NAME": ctx.compute_env,
        "SLURM_JOB_ID": str(ctx.job_id),
        "SLURM_JOBID": str(ctx.job_id),
        "SLURM_JOB_NAME": ctx.job_name,
        "SLURM_JOB_USER": ctx.user,
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_NODELIST": nodelist,
        "SLURM_JOB_NUM_NODES": str(num_nodes),
        "SLURM_NNODES": str(num_nodes),
        "SLURM_NODEID": str(ctx.node_index),
        "SLURMD_NODENAME": ctx.node_names[ctx.node_index],
        "SLURM_CPUS_ON_NODE": str(ctx.cpus_on_node),
        "SLURM_JOB_CPUS_PER_NODE": str(ctx.cpus_on_node),
        "SLURM_JOB_PARTITION": ctx.queue,
        "SLURM_RESTART_COUNT": str(ctx.attempt - 1),
        "MASTER_ADDR": main_addr,
        "MASTER_PORT": str(MASTER_PORT_BASE + ctx.job_id % 1000),
        "WORLD_SIZE": str(num_nodes),
        "NODE_RANK": str(ctx.node_index),
    }
    if ctx.slots:
        ours["SLURM_TASKS_PER_NODE"] = tasks_per_node(ctx.slots)
        if ctx.ntasks:  # as Slurm: only when tasks were asked for (srun's default count)
            ours["SLURM_NTASKS"] = str(ctx.ntasks)
            ours["SLURM_NPROCS"] = str(ctx.ntasks)
        ours["HPCBATCH_SLOTS"] = str(ctx.slots[ctx.node_index])
        ours["HPCBATCH_LAUNCH_MODE"] = ctx.launch_mode
    if ctx.submit_dir:
        ours["SLURM_SUBMIT_DIR"] = ctx.submit_dir
        ours["HPCBATCH_SUBMIT_DIR"] = ctx.submit_dir
    if ctx.time_limit_s:
        ours["HPCBATCH_TIME_LIMIT"] = str(ctx.time_limit_s)
    if ctx.array_index is not None and ctx.array_job_id is not None:
        ours["HPCBATCH_ARRAY_INDEX"] = str(ctx.array_index)
        ours["AWS_BATCH_JOB_ARRAY_INDEX"] = str(ctx.array_index)
        ours["SLURM_ARRAY_JOB_ID"] = str(ctx.array_job_id)
        ours["SLURM_ARRAY_TASK_ID"] = str(ctx.array_index)
        for suffix, value in (
            ("COUNT", ctx.array_count),
            ("MIN", ctx.array_min),
            ("MAX", ctx.array_max),
        ):
            if value is not None:
                ours[f"SLURM_ARRAY_TASK_{suffix}"] = str(value)
                ours[f"HPCBATCH_ARRAY_{suffix}"] = str(value)
    if ctx.host_has_gpus or ctx.gpus_on_node:
        # An empty list hides every GPU: a job that asked for none must not touch another's.
        visible = ",".join(str(g) for g in ctx.gpus_on_node)
        ours["CUDA_VISIBLE_DEVICES"] = visible
        ours["NVIDIA_VISIBLE_DEVICES"] = visible or "void"
        ours["SLURM_JOB_GPUS"] = visible
        ours["GPU_DEVICE_ORDINAL"] = visible
    env.update(ours)
    return env
