"""Multi-node jobs on the real sandbox: gang placement, per-node environment, launch modes."""

from __future__ import annotations

import pytest

from hpcbatch.controller.app import Controller
from hpcbatch.core.hostlist import compress
from tests.integration.conftest import Api, until

pytestmark = pytest.mark.sshd

ENV_SCRIPT = """#!/bin/sh
env | grep -E '^(HPCBATCH_|SLURM_|AWS_BATCH_|MASTER_|WORLD_SIZE|NODE_RANK|OMPI_MCA_orte)' | sort
echo "HOSTFILE<<"; cat "$HPCBATCH_HOSTFILE"; echo ">>"
echo "MPICH<<"; cat "$HPCBATCH_HOSTFILE_MPICH"; echo ">>"
"""


def parse_env(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.replace("_", "").isalnum():
            out[key] = value
    return out


async def node_log(api: Api, job_id: int, node: int, stream: str = "stdout") -> str:
    return str((await api("logs", job_id=job_id, node=node, stream=stream))["data"])


@pytest.mark.parametrize("nodes", [2, 4])
async def test_environment_on_every_node(cluster: tuple[Controller, Api], nodes: int) -> None:
    c, api = cluster
    job_id = await api.submit(
        script=ENV_SCRIPT, nodes=nodes, launch_mode="all", ntasks_per_node=2, name="envtest"
    )
    (summary,) = await api.wait(job_id)
    assert summary["state"] == "SUCCEEDED", summary
    hosts = summary["hosts"]
    assert len(hosts) == nodes
    show = await api("show", job_id=job_id)
    by_node = {a["node"]: a["host"] for a in show["attempts"]}
    addrs = [c.cluster.hosts[by_node[i]].spec.address for i in range(nodes)]
    names = [by_node[i] for i in range(nodes)]
    for i in range(nodes):
        text = await node_log(api, job_id, i)
        env = parse_env(text)
        assert env["HPCBATCH_NODE_INDEX"] == env["AWS_BATCH_JOB_NODE_INDEX"] == str(i)
        assert env["SLURM_NODEID"] == env["NODE_RANK"] == str(i)
        assert env["HPCBATCH_NUM_NODES"] == env["SLURM_NNODES"] == str(nodes)
        assert env["WORLD_SIZE"] == env["AWS_BATCH_JOB_NUM_NODES"] == str(nodes)
        assert env["HPCBATCH_MAIN_NODE_INDEX"] == "0"
        assert env["MASTER_ADDR"] == env["HPCBATCH_MAIN_NODE_ADDR"] == addrs[0]
        assert env["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] == addrs[0]
        assert env["HPCBATCH_NODE_ADDRS"] == ",".join(addrs)
        assert env["SLURM_JOB_NODELIST"] == compress(names)
        assert "[" in env["SLURM_JOB_NODELIST"]  # the sandbox's nodes are numbered alike
        assert env["SLURM_JOB_ID"] == env["HPCBATCH_JOB_ID"] == str(job_id)
        assert env["SLURM_NTASKS"] == str(2 * nodes)
        assert env["SLURM_TASKS_PER_NODE"] == f"2(x{nodes})"
        assert env["OMPI_MCA_orte_default_hostfile"] == env["HPCBATCH_HOSTFILE"]
        assert int(env["MASTER_PORT"]) > 1024
        hostfile = text.split("HOSTFILE<<\n")[1].split(">>")[0]
        assert hostfile == "".join(f"{a} slots=2\n" for a in addrs)
        mpich = text.split("MPICH<<\n")[1].split(">>")[0]
        assert mpich == "".join(f"{a}:2\n" for a in addrs)
    # Every node is free again.
    await until(lambda: all(not h.holders for h in c.cluster.hosts.values()), what="released")
