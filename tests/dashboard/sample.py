"""Fixed cluster data for snapshots and the docs' screenshots: no clock, no random ids.

Shaped exactly as the controller's `jobs`, `hosts`, `queues` and `show` replies
(the Pilot tests check the live shapes against the same views).
"""

from __future__ import annotations

from typing import Any

from hpcbatch.dashboard.model import Model

NOW = 1_700_000_000.0  # the frozen clock


def clock() -> float:
    return NOW


def host(
    name: str,
    fabric: str | None,
    cpus: int = 16,
    mem: int = 65536,
    gpus: int = 0,
    used: tuple[int, int, int] = (0, 0, 0),
    state: str = "UP",
    admin: str = "ACTIVE",
    jobs: tuple[int, ...] = (),
    labels: dict[str, str] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "address": "10.0.0." + name[-1],
        "port": 22,
        "state": state,
        "reason": reason,
        "admin": admin,
        "admin_reason": "disk replacement" if admin == "DRAIN" else None,
        "fabric": fabric,
        "labels": labels or {"rack": "r1" if name < "node5" else "r2"},
        "cpus": cpus,
        "memory_mb": mem,
        "gpus": list(range(gpus)),
        "alloc_cpus": used[0],
        "alloc_memory_mb": used[1],
        "alloc_gpus": list(range(used[2])),
        "jobs": list(jobs),
        "mismatches": [],
        "facts": None,
    }


def job(
    id: int,
    name: str,
    state: str,
    user: str = "alice",
    queue: str = "default",
    nodes: int = 1,
    cpus: int = 1,
    gpus: int = 0,
    hosts: tuple[str, ...] = (),
    reason: str | None = None,
    started: float | None = None,
    ended: float | None = None,
    limit: int | None = 3600,
    exit_code: int | None = None,
    parent: int | None = None,
    index: int | None = None,
    size: int | None = None,
) -> dict[str, Any]:
    return {
        "id": id,
        "name": name,
        "user": user,
        "queue": queue,
        "state": state,
        "reason": reason,
        "submitted": NOW - 3000 + id,
        "started": started,
        "ended": ended,
        "exit_code": exit_code,
        "attempt": 1 if started else 0,
        "nodes": nodes,
        "cpus": cpus,
        "memory_mb": 4096 * cpus,
        "gpus": gpus,
        "time_limit_s": limit,
        "hosts": list(hosts),
        "display_id": f"{parent}_{index}" if parent is not None else str(id),
        "array_parent": parent,
        "array_index": index,
        "array_size": size,
        "definition": None,
    }


def hosts() -> list[dict[str, Any]]:
    return [
        host("node1", "ib-a", used=(16, 65536, 0), jobs=(101,)),
        host("node2", "ib-a", used=(16, 65536, 0), jobs=(101,)),
        host("node3", "ib-a", used=(4, 16384, 0), jobs=(103, 121)),
        host("node4", "ib-a"),
        host("node5", "ib-b", cpus=32, mem=262144, gpus=4, used=(8, 32768, 2), jobs=(104,)),
        host("node6", "ib-b", cpus=32, mem=262144, gpus=4, admin="DRAIN"),
        host("node7", None, cpus=8, mem=32768, state="UNREACHABLE", reason="connection refused"),
        host("node8", None, cpus=8, mem=32768, used=(2, 8192, 0), jobs=(122,)),
    ]


def jobs() -> list[dict[str, Any]]:
    out = [
        job(101, "cfd-mesh", "RUNNING", nodes=2, cpus=16, hosts=("node1", "node2"),
            started=NOW - 754, limit=7200),
        job(102, "cfd-post", "PENDING", reason="Dependency: afterok:101"),
        job(103, "preprocess", "RUNNING", user="bob", queue="short", cpus=2,
            hosts=("node3",), started=NOW - 95, limit=600),
        job(104, "train-resnet", "RUNNING", user="carol", queue="gpu", cpus=8, gpus=2,
            hosts=("node5",), started=NOW - 4000, limit=86400),
        job(105, "train-big", "RUNNABLE", user="carol", queue="gpu", cpus=8, gpus=4,
            reason="Resources: needs 8 CPUs, 32768 MB, 4 GPUs on one host; the largest free "
            "is 24 CPUs, 2 GPUs on node5"),
        job(106, "nightly-report", "RUNNABLE", user="dave", queue="batch",
            reason="QueueDisabled: queue batch is disabled"),
        job(107, "hello", "SUCCEEDED", started=NOW - 2000, ended=NOW - 1990, exit_code=0),
        job(108, "broken", "FAILED", user="bob", started=NOW - 1500, ended=NOW - 1499,
            exit_code=2, reason="exit code 2"),
        job(109, "wide-mpi", "RUNNABLE", nodes=4, cpus=16, queue="default",
            reason="Reservation: would delay job 105"),
    ]  # fmt: skip
    out.append(job(120, "sweep", "RUNNING", size=12))
    states = ["SUCCEEDED"] * 4 + ["FAILED"] + ["RUNNING"] * 2 + ["RUNNABLE"] * 5
    for i, state in enumerate(states):
        running = state == "RUNNING"
        done = state in ("SUCCEEDED", "FAILED")
        out.append(
            job(
                121 + i, "sweep", state, parent=120, index=i,
                hosts=(("node3",) if i == 5 else ("node8",)) if running else (),
                started=NOW - 300 + 10 * i if state != "RUNNABLE" else None,
                ended=NOW - 100 if done else None,
                exit_code=(0 if state == "SUCCEEDED" else 1) if done else None,
                reason="Throttle: array 120 runs 2 of %2" if state == "RUNNABLE" else None,
            )
        )  # fmt: skip
    return out


def queues() -> list[dict[str, Any]]:
    def q(name: str, prio: int, state: str = "ENABLED", default: bool = False) -> dict[str, Any]:
        hosts = ["node5", "node6"] if name == "gpu" else ["node1", "node2", "node3", "node4"]
        return {
            "name": name,
            "priority": prio,
            "state": state,
            "compute_environments": ["gpu-ce"] if name == "gpu" else ["cpu-ce"],
            "hosts": hosts,
            "default": default,
            "counts": {},
        }

    return [
        q("default", 100, default=True),
        q("short", 500),
        q("gpu", 300),
        q("batch", 10, "DISABLED"),
    ]


def model() -> Model:
    m = Model(user="alice", admin=True)
    m.load(jobs(), hosts(), queues())
    return m


def detail(job_id: int = 101) -> dict[str, Any]:
    """`show` for one job of the sample."""
    base = next(j for j in jobs() if j["id"] == job_id)
    script = (
        "#!/bin/bash\n#SBATCH --job-name=cfd-mesh\n#SBATCH --nodes=2\n#SBATCH --time=2:00:00\n"
        "module load openmpi\nmpirun ./mesh --input case.cfg\n"
    )
    return {
        **base,
        "request": {
            "name": base["name"], "script": script, "nodes": base["nodes"],
            "cpus": base["cpus"], "memory_mb": base["memory_mb"], "gpus": base["gpus"],
            "time_limit_s": base["time_limit_s"],
            "env": {"OMP_NUM_THREADS": "4", "CASE": "case.cfg"}, "workdir": "/home/alice/cfd",
        },
        "transitions": [
            {"ts": NOW - 800, "old": None, "new": "SUBMITTED", "reason": None},
            {"ts": NOW - 800, "old": "SUBMITTED", "new": "RUNNABLE", "reason": None},
            {"ts": NOW - 760, "old": "RUNNABLE", "new": "STARTING", "reason": "node[1-2]"},
            {"ts": NOW - 754, "old": "STARTING", "new": "RUNNING", "reason": None},
        ],
        "attempts": [
            {"attempt": 1, "node": n, "host": f"node{n + 1}", "state": "RUNNING", "gpus": [],
             "exit_code": None, "started": NOW - 754, "ended": None, "reason": None}
            for n in range(2)
        ],
    }  # fmt: skip


LOG = "".join(f"step {i:4d}  residual {1.0 / (i + 1):.6f}\n" for i in range(40))
