"""The MPI examples on the sandbox: plain `mpirun` across hosts, numbers checked.

Each example job script is submitted as `hpcbatch submit` would (directives
parsed by the CLI's code), from examples/mpi, and runs on at least 2 sandbox
hosts with no hostfile, flags or SSH keys of its own. Every job gets a time
limit of TIME_LIMIT_S: a misconfigured MPI hangs rather than fails, and the
agent's timeout then ends it.
"""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.cli.submit import build_submission
from hpcbatch.controller.app import Controller
from tests.integration.conftest import Api, until

pytestmark = [pytest.mark.sshd, pytest.mark.mpi]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "mpi"
TIME_LIMIT_S = 90


def host_python_has_mpi4py() -> None:
    """The sandbox hosts run /usr/bin/python3 (their PATH); it needs mpi4py."""
    proc = subprocess.run(
        ["/usr/bin/env", "PATH=/usr/local/bin:/usr/bin:/bin", "python3", "-c", "import mpi4py"],
        capture_output=True,
    )
    if proc.returncode != 0:
        pytest.fail("the hosts' python3 lacks mpi4py: apt-get install python3-mpi4py")


async def run_example(api: Api, script: str, *extra: str) -> tuple[dict[str, Any], str]:
    host_python_has_mpi4py()
    sub = build_submission([*extra, str(EXAMPLES / script)], None)
    request = dict(sub.request, submit_dir=str(EXAMPLES), time_limit_s=TIME_LIMIT_S)
    job_id = int((await api("submit", request=request))["job_id"])
    (summary,) = await api.wait(job_id, timeout=TIME_LIMIT_S + 30)
    out = await api.logs(job_id)
    err = await api.logs(job_id, "stderr")
    assert summary["state"] == "SUCCEEDED", f"{summary}\n--- stdout\n{out}\n--- stderr\n{err}"
    return summary, out


async def test_hello_on_four_hosts(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    summary, out = await run_example(api, "hello.sh")
    assert len(summary["hosts"]) == 4
    lines = re.findall(r"hello from rank (\d+) of (\d+) on (\S+) \(node (\d+)\)", out)
    assert [int(r) for r, *_ in lines] == [0, 1, 2, 3]
    assert {n for _, n, _, _ in lines} == {"4"}
    assert sorted(h for _, _, h, _ in lines) == sorted(summary["hosts"])
    assert "hosts: 4" in out
    await until(lambda: all(not h.holders for h in c.cluster.hosts.values()), what="released")


async def test_ring_and_allreduce(cluster: tuple[Controller, Api]) -> None:
    _, api = cluster
    summary, out = await run_example(api, "ring.sh")
    assert len(summary["hosts"]) == 2
    assert "ring: token=4 expected=4" in out
    assert "allreduce: sum=6 expected=6" in out and "OK" in out


async def test_monte_carlo_pi(cluster: tuple[Controller, Api]) -> None:
    _, api = cluster
    _, out = await run_example(api, "pi.sh")
    m = re.search(r"pi=([0-9.]+) error=([0-9.]+) tolerance=([0-9.]+) ranks=(\d+)", out)
    assert m is not None, out
    estimate, tolerance = float(m[1]), float(m[3])
    assert int(m[4]) == 4
    assert abs(estimate - math.pi) <= tolerance < 0.02


def serial_checksum() -> str:
    argv = [sys.executable, str(EXAMPLES / "heat2d.py"), "--serial"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


async def test_heat_diffusion_matches_serial(cluster: tuple[Controller, Api]) -> None:
    _, api = cluster
    summary, out = await run_example(api, "heat2d.sh")
    assert len(summary["hosts"]) == 3
    serial = await asyncio.to_thread(serial_checksum)
    expected = re.search(r"serial=([0-9.]+)", serial)
    got = re.search(r"checksum parallel=([0-9.]+) serial=([0-9.]+)", out)
    assert expected is not None and got is not None, out
    assert got[1] == got[2] == expected[1]
    assert "ranks=3" in out and "max_abs_diff=0.000e+00" in out


async def test_srun_steps(cluster: tuple[Controller, Api]) -> None:
    _, api = cluster
    _, out = await run_example(api, "srun.sh")
    tasks = sorted(re.findall(r"^(\d+): task (\d+) local (\d+) on node (\d+) of 2$", out, re.M))
    assert tasks == [
        ("0", "0", "0", "0"),
        ("1", "1", "1", "0"),
        ("2", "2", "0", "1"),
        ("3", "3", "1", "1"),
    ]
    assert len(re.findall(r"^[01]: \S+$", out, re.M)) == 2  # srun -n 2 -l hostname


async def test_srun_options(cluster: tuple[Controller, Api]) -> None:
    """srun -n 4 over 2 nodes, --ntasks-per-node=1, a failing task's status, no allocation."""
    _, api = cluster
    script = """#!/bin/sh
srun -n 4 sh -c 'echo "n4 $SLURM_PROCID $SLURM_NODEID $HPCBATCH_NODE_INDEX $SLURM_NTASKS"' | sort
srun --ntasks-per-node=1 sh -c 'echo "pn1 $SLURM_PROCID $SLURM_NODEID $SLURM_STEP_ID"' | sort
srun -n 2 sh -c 'exit $((SLURM_PROCID * 3))'; echo "worst=$?"
env -u HPCBATCH_JOB_ID srun true; echo "outside=$?"
"""
    job_id = await api.submit(script=script, nodes=2, ntasks_per_node=2, time_limit_s=60)
    (summary,) = await api.wait(job_id, timeout=90)
    out = await api.logs(job_id)
    err = await api.logs(job_id, "stderr")
    assert summary["state"] == "SUCCEEDED", (out, err)
    lines = out.splitlines()
    assert [x for x in lines if x.startswith("n4")] == [
        "n4 0 0 0 4", "n4 1 0 0 4", "n4 2 1 1 4", "n4 3 1 1 4"
    ]  # fmt: skip
    assert [x for x in lines if x.startswith("pn1")] == ["pn1 0 0 1", "pn1 1 1 1"]
    assert "worst=3" in lines and "outside=1" in lines
    assert "task 1: exited with status 3" in err
    assert "use `hpcbatch run" in err


MPI4PY_STEP = (
    "srun python3 -c 'import os; from mpi4py import MPI; c = MPI.COMM_WORLD; e = os.environ; "
    'print("mpi", c.rank, c.size, c.allreduce(c.rank + 1), e["SLURM_PROCID"], '
    'e["SLURM_LOCALID"], e["SLURM_NODEID"], e["SLURM_NTASKS"], e["HPCBATCH_NODE_INDEX"])\''
)
HELLO_C = r"""#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int rank, size, one = 1, sum = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("mpich %d %d %d %s %s %s\n", rank, size, sum, getenv("SLURM_PROCID"),
           getenv("SLURM_NODEID"), getenv("HPCBATCH_NODE_INDEX"));
    MPI_Finalize();
    return rank == 3 ? 7 : 0;
}
"""


def mpi_rows(out: str, tag: str) -> list[list[str]]:
    return sorted(line.split()[1:] for line in out.splitlines() if line.startswith(tag + " "))


async def test_srun_of_an_mpi4py_program_is_one_openmpi_job(
    cluster: tuple[Controller, Api],
) -> None:
    """srun python3 -c '...mpi4py...' in a 2x2 job: one world of 4, Slurm's task variables."""
    _, api = cluster
    host_python_has_mpi4py()
    script = f"#!/bin/sh\n{MPI4PY_STEP}\nsrun -N 1 -n 2 -l --mpi=openmpi {MPI4PY_STEP[5:]}\n"
    job_id = await api.submit(script=script, nodes=2, ntasks_per_node=2, time_limit_s=TIME_LIMIT_S)
    (summary,) = await api.wait(job_id, timeout=TIME_LIMIT_S + 30)
    out, err = await api.logs(job_id), await api.logs(job_id, "stderr")
    assert summary["state"] == "SUCCEEDED", (out, err)
    # rank size sum(1..4) procid localid nodeid ntasks node-index: 2 ranks on each host
    assert mpi_rows(out, "mpi") == [
        ["0", "4", "10", "0", "0", "0", "4", "0"],
        ["1", "4", "10", "1", "1", "0", "4", "0"],
        ["2", "4", "10", "2", "0", "1", "4", "1"],
        ["3", "4", "10", "3", "1", "1", "4", "1"],
    ], (out, err)
    labelled = sorted(x for x in out.splitlines() if x[:3] in ("0: ", "1: "))
    assert labelled == ["0: mpi 0 2 3 0 0 0 2 0", "1: mpi 1 2 3 1 1 0 2 0"], out
    assert "PMI support" not in err


def build_mpich_hello() -> Path:
    """Compiled where the sandbox hosts' login user can read it (pytest's tmp is 0700)."""
    if not Path("/usr/bin/mpicc.mpich").exists():
        pytest.fail("MPICH is missing: apt-get install mpich libmpich-dev (install-prereqs.sh)")
    where = Path(tempfile.mkdtemp(prefix="hb-mpich-"))
    where.chmod(0o755)
    src, binary = where / "hello.c", where / "hello_mpich"
    src.write_text(HELLO_C)
    subprocess.run(["mpicc.mpich", "-o", str(binary), str(src)], check=True)
    return binary


async def test_srun_of_an_mpich_program(cluster: tuple[Controller, Api]) -> None:
    """A C program built with mpicc.mpich: srun starts it under Hydra, 4 ranks on 2 hosts."""
    _, api = cluster
    binary = await asyncio.to_thread(build_mpich_hello)
    script = f"#!/bin/sh\nsrun {binary}; echo step=$?\nsrun -n 3 {binary}; echo small=$?\n"
    job_id = await api.submit(script=script, nodes=2, ntasks_per_node=2, time_limit_s=TIME_LIMIT_S)
    (summary,) = await api.wait(job_id, timeout=TIME_LIMIT_S + 30)
    out, err = await api.logs(job_id), await api.logs(job_id, "stderr")
    assert summary["state"] == "SUCCEEDED", (out, err)
    first, _, second = out.partition("step=")
    assert mpi_rows(first, "mpich") == [
        ["0", "4", "4", "0", "0", "0"],
        ["1", "4", "4", "1", "0", "0"],
        ["2", "4", "4", "2", "1", "1"],
        ["3", "4", "4", "3", "1", "1"],
    ], out
    assert mpi_rows(second, "mpich") == [  # -n 3 on 2 nodes: block layout 2 + 1
        ["0", "3", "3", "0", "0", "0"],
        ["1", "3", "3", "1", "0", "0"],
        ["2", "3", "3", "2", "1", "1"],
    ], out
    assert "step=7" in out and "small=0" in out, (out, err)
