"""Pure parts of multi-node jobs: node ranges, hostfiles, exits, MPI settings, shims' parsing."""

from __future__ import annotations

import pytest

from hpcbatch.core import gang
from hpcbatch.core.jobenv import NodeContext, job_environment
from hpcbatch.transport.agent import rsh, srun


@pytest.mark.parametrize(
    ("text", "nodes", "expected"),
    [("0", 4, [0]), ("1:", 4, [1, 2, 3]), (":1", 4, [0, 1]), ("1:2", 4, [1, 2]),
     (" 3 ", 4, [3]), ("0:", 1, [0]), (":", 2, [0, 1])],
)  # fmt: skip
def test_node_ranges(text: str, nodes: int, expected: list[int]) -> None:
    assert list(gang.parse_node_range(text, nodes)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("4", "reaches node 4"), ("2:1", "empty"), ("a", "is not"), ("", "is not")],
)
def test_bad_node_ranges(text: str, message: str) -> None:
    with pytest.raises(gang.NodeRangeError, match=message):
        gang.parse_node_range(text, 4)


def test_overlapping_ranges_are_refused() -> None:
    gang.check_node_ranges([{"range": "0"}, {"range": "1:"}], 4)
    with pytest.raises(gang.NodeRangeError, match="node 2 is in two node ranges"):
        gang.check_node_ranges([{"range": "0:2"}, {"range": "2:"}], 4)


REQ = {
    "script": "main-script", "args": ["a"], "nodes": 4, "cpus": 2, "memory_mb": 100, "gpus": 1,
    "node_ranges": [{"range": "1:2", "script": "worker", "cpus": 4, "gpus": 0,
                     "env": {"ROLE": "w"}}],
}  # fmt: skip


def test_node_spec_mode_all_resolves_ranges() -> None:
    req = dict(REQ, launch_mode="all")
    assert gang.node_spec(req, 0).script == "main-script"
    w = gang.node_spec(req, 2)
    assert (w.script, w.args, w.cpus, w.gpus, w.env) == ("worker", ("a",), 4, 0, (("ROLE", "w"),))
    assert gang.node_spec(req, 3).script == "main-script"
    assert gang.gang_shape(req) == (4, 100, 1)


def test_node_spec_mode_main_holds_other_nodes() -> None:
    req = dict(REQ, main_node=2)
    assert gang.node_spec(req, 2).script == "worker" and not gang.node_spec(req, 2).holder
    for i in (0, 1, 3):
        spec = gang.node_spec(req, i)
        assert spec.holder and spec.script == gang.HOLDER_SCRIPT
    single = {"script": "x", "nodes": 1}
    assert not gang.node_spec(single, 0).holder


def test_hostfiles_and_tasks_per_node() -> None:
    addrs, slots = ["10.0.0.1", "10.0.0.2", "10.0.0.3"], [2, 2, 1]
    assert gang.openmpi_hostfile(addrs, slots) == (
        "10.0.0.1 slots=2\n10.0.0.2 slots=2\n10.0.0.3 slots=1\n"
    )
    assert gang.mpich_hostfile(addrs, slots) == "10.0.0.1:2\n10.0.0.2:2\n10.0.0.3:1\n"
    assert gang.tasks_per_node([2, 2, 1]) == "2(x2),1"
    assert gang.tasks_per_node([4]) == "4"
    assert gang.node_slots({"ntasks_per_node": 3}, 16) == 3
    assert gang.node_slots({}, 16) == 16


def test_mpi_environment() -> None:
    sandbox = gang.mpi_environment(["127.0.0.2", "127.0.0.3"], as_root=True)
    assert sandbox["OMPI_MCA_plm_rsh_agent"] == "hpcbatch-rsh"
    assert sandbox["OMPI_MCA_btl"] == "self,tcp" and sandbox["OMPI_MCA_btl_tcp_if_include"] == "lo"
    assert sandbox["OMPI_ALLOW_RUN_AS_ROOT"] == sandbox["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"
    real = gang.mpi_environment(["10.0.0.1", "10.0.0.2"], as_root=False)
    assert "OMPI_MCA_btl" not in real and "OMPI_ALLOW_RUN_AS_ROOT" not in real
    assert real["HYDRA_LAUNCHER_EXEC"] == "hpcbatch-rsh"


@pytest.mark.parametrize(
    ("mode", "node", "state", "final", "reason"),
    [
        ("main", 0, "SUCCEEDED", "SUCCEEDED", "exit code 0"),
        ("main", 0, "FAILED", "FAILED", "exit code 2"),
        ("main", 1, "SUCCEEDED", "FAILED", "node 1 (n2) failed: its holder process ended"),
        ("all", 1, "SUCCEEDED", None, "exit code 0"),
        ("all", 1, "FAILED", "FAILED", "node 1 (n2) failed: exit code 2"),
    ],
)
def test_node_exit(mode: str, node: int, state: str, final: str | None, reason: str) -> None:
    given = "exit code 0" if state == "SUCCEEDED" else "exit code 2"
    out = gang.node_exit({"nodes": 3, "launch_mode": mode}, node, "n2", state, given)
    assert out.final == final and out.reason.startswith(reason)


def test_job_environment_multi_node() -> None:
    ctx = NodeContext(
        job_id=7, job_name="j", user="u", queue="q", compute_env="ce", attempt=1, node_index=1,
        node_names=("node1", "node2", "node3", "node4"),
        node_addrs=("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"), main_node_index=0,
        cpus_on_node=8, gpus_on_node=(0, 1), host_has_gpus=True, submit_dir=None,
        slots=(2, 2, 2, 2), ntasks=8,
    )  # fmt: skip
    env = job_environment(ctx, {"SLURM_JOB_ID": "spoofed", "MINE": "x"})
    assert env["SLURM_JOB_NODELIST"] == "node[1-4]" and env["SLURM_JOB_ID"] == "7"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["HPCBATCH_GPUS_PER_NODE"] == "2"
    assert env["SLURM_TASKS_PER_NODE"] == "2(x4)" and env["SLURM_NTASKS"] == "8"
    assert env["MASTER_ADDR"] == "10.0.0.1" and env["NODE_RANK"] == "1" and env["MINE"] == "x"


@pytest.mark.parametrize(
    ("argv", "host", "words", "no_stdin"),
    [
        (["node2", "orted", "-mca", "x"], "node2", ["orted", "-mca", "x"], False),
        (["-x", "-n", "-o", "StrictHostKeyChecking=no", "-p", "2", "u@h", "ls"], "h", ["ls"], 1),
        (["-l", "user", "h", "echo", "a b"], "h", ["echo", "a b"], False),
        (["-xTq", "-oBatchMode=yes", "h", "true"], "h", ["true"], False),
        (["--", "h", "-v"], "h", ["-v"], False),
    ],
)  # fmt: skip
def test_rsh_argv(argv: list[str], host: str, words: list[str], no_stdin: bool) -> None:
    assert rsh.parse_argv(argv) == (host, words, no_stdin)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["-Z", "h", "ls"], "unknown option -Z"), (["h"], "no command"), (["-p"], "needs a value"),
     ([], "no host")],
)  # fmt: skip
def test_rsh_argv_errors(argv: list[str], message: str) -> None:
    with pytest.raises(rsh.UsageError, match=message):
        rsh.parse_argv(argv)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((4, None, None, None, None), [1, 1, 1, 1]),  # one task per node
        ((4, 4, None, None, None), [1, 1, 1, 1]),
        ((2, 5, None, None, None), [3, 2]),  # block: the first nodes take the remainder
        ((4, 2, None, None, None), [1, 1]),  # fewer tasks than nodes: fewer nodes
        ((4, None, None, 2, None), [2, 2, 2, 2]),
        ((4, 3, None, 2, None), [2, 1]),
        ((4, None, 2, None, None), [1, 1]),
        ((2, None, None, None, 6), [3, 3]),  # the job's --ntasks
    ],
)
def test_srun_layout(args: tuple[int, int | None, int | None, int | None, int | None],
                     expected: list[int]) -> None:  # fmt: skip
    assert srun.layout(*args) == expected


def test_srun_layout_errors() -> None:
    with pytest.raises(srun.SrunError, match="only 2 nodes"):
        srun.layout(2, None, 3, None, None)
    with pytest.raises(srun.SrunError, match="do not fit"):
        srun.layout(2, 5, None, 2, None)


def test_srun_argv() -> None:
    o = srun.parse_argv(["-n4", "--ntasks-per-node=2", "-l", "--mpi=pmix", "-c", "2", "prog", "-n"])
    assert (o.ntasks, o.per_node, o.label, o.command) == (4, 2, True, ["prog", "-n"])
    assert srun.parse_argv(["-N", "2", "--", "x"]).nodes == 2
    with pytest.raises(srun.SrunError, match="unsupported option --bogus"):
        srun.parse_argv(["--bogus", "x"])
    with pytest.raises(srun.SrunError, match="name a program"):
        srun.parse_argv(["-n", "2"])
    assert srun.compress_counts([2, 2, 1]) == "2(x2),1"
