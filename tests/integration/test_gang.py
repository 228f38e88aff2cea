"""Multi-node jobs on the real sandbox: gang placement, per-node environment, launch modes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.client import ClientError
from hpcbatch.controller.app import Controller
from hpcbatch.core.hostlist import compress
from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import Api, until

pytestmark = pytest.mark.sshd

ENV_SCRIPT = """#!/bin/sh
env | grep -E '^(HPCBATCH_|SLURM_|AWS_BATCH_|MASTER_|WORLD_SIZE|NODE_RANK|OMPI_MCA_orte)' | sort
echo "HOSTFILE<<"; cat "$HPCBATCH_HOSTFILE"; echo ">>"
echo "MPICH<<"; cat "$HPCBATCH_HOSTFILE_MPICH"; echo ">>"
# The main node's end ends the job and stops the others (AWS Batch): it lets them finish.
[ "$HPCBATCH_NODE_INDEX" = "$HPCBATCH_MAIN_NODE_INDEX" ] && sleep 1
exit 0
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


async def test_launch_modes_main_and_all(cluster: tuple[Controller, Api]) -> None:
    _, api = cluster
    script = '#!/bin/sh\necho "node $HPCBATCH_NODE_INDEX mode $HPCBATCH_LAUNCH_MODE"\n'
    main_job = await api.submit(script=script, nodes=3)
    all_job = await api.submit(script=script, nodes=3, launch_mode="all")
    results = {s["id"]: s for s in await api.wait(main_job, all_job)}
    assert results[main_job]["state"] == results[all_job]["state"] == "SUCCEEDED"
    # main: the script ran on node 0 only; the others held their hosts, silently.
    assert await node_log(api, main_job, 0) == "node 0 mode main\n"
    assert await node_log(api, main_job, 1) == await node_log(api, main_job, 2) == ""
    # all: every node ran it with its own index.
    for i in range(3):
        assert await node_log(api, all_job, i) == f"node {i} mode all\n"
    show = await api("show", job_id=main_job)
    others = [a for a in show["attempts"] if a["node"] != 0]
    assert all(a["state"] == "LOST" and "main node" in a["reason"] for a in others)


async def test_main_node_decides_and_node_ranges(cluster: tuple[Controller, Api]) -> None:
    """Mode all, main node 1: a non-main node's exit 0 does not end the job; node 1's
    exit code does. Node ranges give nodes their own command."""
    _, api = cluster
    job_id = await api.submit(
        script="#!/bin/sh\nsleep 1; echo default $HPCBATCH_NODE_INDEX\n",
        nodes=3,
        launch_mode="all",
        main_node=1,
        node_ranges=[
            {"range": "0", "script": "#!/bin/sh\necho quick\n"},
            {"range": "1", "script": "#!/bin/sh\nsleep 1.5; echo main; exit 3\n",
             "env": {"ROLE": "main"}},
        ],
    )  # fmt: skip
    (s,) = await api.wait(job_id)
    assert s["state"] == "FAILED" and s["reason"] == "exit code 3" and s["exit_code"] == 3
    assert await node_log(api, job_id, 0) == "quick\n"
    assert await node_log(api, job_id, 1) == "main\n"
    assert await node_log(api, job_id, 2) == "default 2\n"
    show = await api("show", job_id=job_id)
    states = {a["node"]: a["state"] for a in show["attempts"]}
    assert states == {0: "EXITED", 1: "EXITED", 2: "EXITED"}


async def test_failing_node_fails_the_job_at_once(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    job_id = await api.submit(
        script='#!/bin/sh\n[ "$HPCBATCH_NODE_INDEX" = 2 ] && exit 5\nsleep 60\n',
        nodes=3,
        launch_mode="all",
    )
    (s,) = await api.wait(job_id, timeout=20)
    host = {a["node"]: a["host"] for a in (await api("show", job_id=job_id))["attempts"]}[2]
    assert s["state"] == "FAILED"
    assert s["reason"] == f"node 2 ({host}) failed: exit code 5"
    assert s["ended"] - s["started"] < 10
    await until(lambda: all(not h.holders for h in c.cluster.hosts.values()), what="released")


async def test_gang_is_all_or_nothing(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    blocker = await api.submit(script="#!/bin/sh\nsleep 60\n", exclusive=True)
    await until(lambda: c.jobs.live(blocker).state == "RUNNING", what="blocker running")
    gang_job = await api.submit(script="#!/bin/sh\ntrue\n", nodes=4)
    job = c.jobs.live(gang_job)
    await until(lambda: job.reason and "free now" in job.reason, what="pending reason")
    assert job.state == "RUNNABLE" and job.reason == (
        "Resources: needs 4 whole hosts with 1 CPU each; 3 free now"
    )
    assert not job.attempts  # nothing was taken while it waits
    held = {a.job_id for h in c.cluster.hosts.values() for a in h.holders.values()}
    assert held == {blocker}
    await api("cancel", job_ids=[blocker])
    (s,) = await api.wait(gang_job, timeout=30)
    assert s["state"] == "SUCCEEDED" and len(s["hosts"]) == 4


async def test_refused_at_submit(cluster: tuple[Controller, Api]) -> None:
    _, api = cluster
    with pytest.raises(ClientError) as info:
        await api.submit(nodes=10)
    assert info.value.kind == "infeasible"
    assert "needs 10 whole hosts" in info.value.message and "only 4" in info.value.message
    with pytest.raises(ClientError) as info:
        await api.submit(nodes=3, fabric="island")  # the sandbox's islands have 2 hosts each
    assert "largest island" in info.value.message
    with pytest.raises(ClientError) as info:
        await api.submit(nodes=2, main_node=2)
    assert info.value.kind == "bad_request" and "main_node 2" in info.value.message
    with pytest.raises(ClientError) as info:
        await api.submit(nodes=2, node_ranges=[{"range": "1:3"}])
    assert "reaches node 3" in info.value.message


async def test_fabric_island_wait_reason(
    sandbox: Sandbox, controller_factory: Any, tmp_path: Path
) -> None:
    """A 4-host island with one host busy: a 4-node fabric job waits, naming the island."""
    text = re.sub(r'fabric = "island-[ab]"', 'fabric = "ib-a"', sandbox.inventory.read_text())
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(text)
    c, api = await controller_factory(inventory=inventory)
    blocker = await api.submit(script="#!/bin/sh\nsleep 60\n")
    await until(lambda: c.jobs.live(blocker).state == "RUNNING", what="blocker running")
    job_id = await api.submit(nodes=4, fabric="ib")
    job = c.jobs.live(job_id)
    await until(lambda: job.reason and "island" in job.reason, what="island reason")
    assert job.reason == (
        "Resources: needs 4 whole hosts with 1 CPU each in one fabric island of kind ib; "
        "best island ib-a has 3 free, lacks 1"
    )
    await api("cancel", job_ids=[blocker])
    (s,) = await api.wait(job_id, timeout=30)
    assert s["state"] == "SUCCEEDED"
