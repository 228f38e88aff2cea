"""Multi-node parallel jobs, the pure part: node ranges, hostfiles, exits, MPI settings.

A multi-node job is N whole hosts held at once (the scheduler's gang
placement); this module decides everything else about it that needs no I/O,
so the controller only applies the answers:

* which script, arguments and resources each node index gets (node ranges, as
  AWS Batch's `targetNodes`: `"0"`, `"1:"`, `"2:5"`, `":3"`, inclusive);
* what runs on each node in each launch mode (`main`: the script on the main
  node, a holder that keeps the node reserved elsewhere; `all`: every node);
* the hostfiles (OpenMPI `addr slots=N`, MPICH/Hydra `addr:N`) and the MPI
  launcher settings passed through the environment;
* what a node's exit means for the whole job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HOLDER_SCRIPT = (
    "#!/bin/sh\n# hpcbatch: keeps this node reserved for the job's main node\n"
    "exec sleep 2147483647\n"
)
"""What a non-main node runs in launch mode `main`: nothing, until it is stopped.
Processes that the job starts on the node (through hpcbatch-rsh or srun) belong
to this attempt and are stopped with it."""

_RANGE_RE = re.compile(r"^\s*(\d*)\s*(:?)\s*(\d*)\s*$")

STOP_GRACE_S = 3.0
"""Grace period (TERM, then KILL) for the other nodes once a job's outcome is known."""


class NodeRangeError(ValueError):
    """A node range that cannot be used with the job's node count."""


def parse_node_range(text: str, nodes: int) -> range:
    """`"0"`, `"1:"`, `":3"`, `"2:5"` (inclusive, as AWS Batch) -> the node indices."""
    m = _RANGE_RE.match(text)
    if m is None or (not m[1] and not m[3] and not m[2]):
        raise NodeRangeError(f"node range {text!r} is not N, N:, :M or N:M")
    if not m[2]:
        lo = hi = int(m[1])
    else:
        lo = int(m[1]) if m[1] else 0
        hi = int(m[3]) if m[3] else nodes - 1
    if lo > hi:
        raise NodeRangeError(f"node range {text!r} is empty (start after end)")
    if hi >= nodes:
        raise NodeRangeError(f"node range {text!r} reaches node {hi}; the job has {nodes} nodes")
    return range(lo, hi + 1)


def check_node_ranges(ranges: Sequence[Mapping[str, Any]], nodes: int) -> None:
    """Every range parses and no node index is in two ranges."""
    owner: dict[int, str] = {}
    for r in ranges:
        text = str(r.get("range", ""))
        for i in parse_node_range(text, nodes):
            if i in owner:
                raise NodeRangeError(f"node {i} is in two node ranges ({owner[i]!r} and {text!r})")
            owner[i] = text


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """What one node index of a job runs and asks for."""

    script: str
    args: tuple[str, ...]
    cpus: int
    memory_mb: int
    gpus: int
    env: tuple[tuple[str, str], ...] = ()
    holder: bool = False  # launch mode main, not the main node


def node_spec(request: Mapping[str, Any], index: int) -> NodeSpec:
    """Resolve node `index` of a (validated) request: its node range over the job's defaults."""
    nodes = int(request.get("nodes") or 1)
    base = NodeSpec(
        script=str(request["script"]),
        args=tuple(request.get("args") or ()),
        cpus=int(request.get("cpus") or 1),
        memory_mb=int(request.get("memory_mb") or 0),
        gpus=int(request.get("gpus") or 0),
    )
    for r in request.get("node_ranges") or ():
        if index in parse_node_range(str(r["range"]), nodes):
            base = NodeSpec(
                script=str(r.get("script") or base.script),
                args=tuple(r["args"]) if r.get("args") is not None else base.args,
                cpus=int(r.get("cpus") or base.cpus),
                memory_mb=int(r.get("memory_mb") or base.memory_mb),
                gpus=int(r["gpus"]) if r.get("gpus") is not None else base.gpus,
                env=tuple(sorted((r.get("env") or {}).items())),
            )
            break
    if nodes > 1 and launch_mode(request) == "main" and index != main_node(request):
        return NodeSpec(HOLDER_SCRIPT, (), base.cpus, base.memory_mb, base.gpus, holder=True)
    return base


def gang_shape(request: Mapping[str, Any]) -> tuple[int, int, int]:
    """(cpus, memory_mb, gpus) every host of the job must have: the largest node range's.

    Multi-node jobs take whole hosts, so one size for all keeps gang placement
    simple; a node range asking for less simply leaves part of its host unused.
    """
    cpus = int(request.get("cpus") or 1)
    mem = int(request.get("memory_mb") or 0)
    gpus = int(request.get("gpus") or 0)
    for r in request.get("node_ranges") or ():
        cpus = max(cpus, int(r.get("cpus") or 0))
        mem = max(mem, int(r.get("memory_mb") or 0))
        gpus = max(gpus, int(r.get("gpus") or 0))
    return cpus, mem, gpus


def is_gang(request: Mapping[str, Any]) -> bool:
    """Whether the job runs on more than one node."""
    return int(request.get("nodes") or 1) > 1


def launch_mode(request: Mapping[str, Any]) -> str:
    return str(request.get("launch_mode") or "main")


def main_node(request: Mapping[str, Any]) -> int:
    return int(request.get("main_node") or 0)


# --------------------------------------------------------------------------- hostfiles


def node_slots(request: Mapping[str, Any], cpus_on_node: int) -> int:
    """MPI slots on a node: `--ntasks-per-node` when given, else the CPUs allocated there."""
    per_node = request.get("ntasks_per_node")
    return int(per_node) if per_node else max(1, cpus_on_node)


def openmpi_hostfile(addrs: Sequence[str], slots: Sequence[int]) -> str:
    return "".join(f"{a} slots={n}\n" for a, n in zip(addrs, slots, strict=True))


def mpich_hostfile(addrs: Sequence[str], slots: Sequence[int]) -> str:
    return "".join(f"{a}:{n}\n" for a, n in zip(addrs, slots, strict=True))


def tasks_per_node(slots: Sequence[int]) -> str:
    """Slurm's SLURM_TASKS_PER_NODE: `2(x3),1` for [2, 2, 2, 1]."""
    out: list[str] = []
    i = 0
    while i < len(slots):
        j = i
        while j + 1 < len(slots) and slots[j + 1] == slots[i]:
            j += 1
        count = j - i + 1
        out.append(f"{slots[i]}(x{count})" if count > 1 else str(slots[i]))
        i = j + 1
    return ",".join(out)


def is_loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr in ("localhost", "::1")


def mpi_environment(addrs: Sequence[str], as_root: bool) -> dict[str, str]:
    """OpenMPI/MPICH settings that make a plain `mpirun prog` use the job's nodes.

    The launcher is hpcbatch-rsh (no SSH between compute nodes); the hostfile
    variables are added by the agent, which knows where it writes them. Hosts on
    loopback addresses are several "hosts" sharing one machine (the sandbox):
    there, shared memory between ranks of one fake host crashes, and CPU binding
    would pile every job on the same cores, so TCP over `lo` and no binding.
    User variables set with the job override all of these.
    """
    env = {
        "OMPI_MCA_plm_rsh_agent": "hpcbatch-rsh",
        "OMPI_MCA_plm_rsh_no_tree_spawn": "1",
        "OMPI_MCA_rmaps_base_oversubscribe": "1",
        "HYDRA_LAUNCHER": "rsh",
        "HYDRA_LAUNCHER_EXEC": "hpcbatch-rsh",
    }
    if addrs and all(is_loopback(a) for a in addrs):
        env.update(
            {
                "OMPI_MCA_btl": "self,tcp",
                "OMPI_MCA_pml": "ob1",
                "OMPI_MCA_btl_tcp_if_include": "lo",
                "OMPI_MCA_oob_tcp_if_include": "lo",
                "OMPI_MCA_hwloc_base_binding_policy": "none",
                "HYDRA_IFACE": "lo",
            }
        )
    if as_root:
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return env


# --------------------------------------------------------------------------- exits


@dataclass(frozen=True, slots=True)
class NodeExit:
    """What one node's end means: `final` None keeps the job running."""

    final: str | None  # "SUCCEEDED" / "FAILED", or None
    reason: str


def node_exit(
    request: Mapping[str, Any],
    node: int,
    host: str,
    main_state: str,
    main_reason: str,
) -> NodeExit:
    """Decide the job's fate when node `node` (on `host`) ends.

    `main_state`/`main_reason` are the outcome that exit would give a
    single-node job. The main node's end always ends the job with that outcome
    (AWS Batch). Another node ending is a failure of the whole job at once,
    except in launch mode `all` when it exits 0: its part is done and the job
    waits for the main node. (AWS Batch ignores a child node's death; hpcbatch
    fails fast, since an MPI or torch job that lost a rank cannot finish.)
    """
    if int(request.get("nodes") or 1) == 1 or node == main_node(request):
        return NodeExit(main_state, main_reason)
    if launch_mode(request) == "all" and main_state == "SUCCEEDED":
        return NodeExit(None, main_reason)
    what = main_reason
    if launch_mode(request) == "main":
        what = f"its holder process ended ({main_reason})"
    return NodeExit("FAILED", f"node {node} ({host}) failed: {what}")
