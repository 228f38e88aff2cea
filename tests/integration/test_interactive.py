"""alloc (salloc), run --pty and exec, driven through a real pseudo-terminal (pexpect).

The CLI runs as a user would type it, in a pty; the controller and the sandbox
hosts are real. alloc's shell is /bin/sh on the submit side: its srun and
mpirun run on the allocated hosts (one MPI world across both).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import pexpect
import pytest

from hpcbatch.controller.app import Controller
from tests.integration.conftest import Api, until

pytestmark = [pytest.mark.sshd]
TIMEOUT_S = 60


def spawn(c: Controller, *argv: str, rows: int = 24, cols: int = 80) -> Any:
    env = {**os.environ, "HPCBATCH_SOCKET": str(c.settings.socket), "SHELL": "/bin/sh",
           "PS1": "PROMPT> ", "TERM": "xterm"}  # fmt: skip
    return pexpect.spawn(
        sys.executable, ["-m", "hpcbatch.cli.main", *argv], env=env, encoding="utf-8",
        timeout=TIMEOUT_S, dimensions=(rows, cols),
    )  # fmt: skip


def alloc_session(c: Controller) -> tuple[str, int, str]:
    child = spawn(c, "alloc", "-N", "2", "--ntasks-per-node=2", "-t", "5")
    child.expect(r"job (\d+) has been allocated nodes (\S+)")
    job_id, hosts = int(child.match[1]), child.match[2]
    child.expect("PROMPT> ")
    child.sendline("srun -l sh -c 'echo T$SLURM_PROCID@$HPCBATCH_NODE_INDEX' | sort; echo ok=$?")
    child.expect("ok=0")
    tasks = child.before
    mpi = "from mpi4py import MPI; c = MPI.COMM_WORLD; print('world', c.size, c.allreduce(1))"
    child.sendline(f'mpirun python3 -c "{mpi}" | sort | uniq -c; echo "done-$SLURM_JOB_ID"')
    child.expect(f"done-{job_id}\r\n")
    tasks += child.before
    child.sendline("exit 4")
    child.expect(pexpect.EOF)
    child.close()
    tasks += child.before or ""
    return tasks, job_id, f"{child.exitstatus} {hosts}"


async def test_alloc_gives_a_shell_whose_srun_and_mpirun_use_the_allocation(
    cluster: tuple[Controller, Api],
) -> None:
    c, api = cluster
    out, job_id, rest = await asyncio.to_thread(alloc_session, c)
    code, hosts = rest.split()
    for line in ("0: T0@0", "1: T1@0", "2: T2@1", "3: T3@1"):
        assert line in out, out
    assert "4 world 4 4" in out, out
    assert "relinquishing job allocation" in out
    assert code == "4"
    (final,) = await api.wait(job_id)
    assert final["state"] == "FAILED" and "alloc ended" in final["reason"], final
    assert sorted(final["hosts"]) == sorted(hosts.split(","))
    await api.wait(job_id)
    # srun's step, then mpirun's: OpenMPI under Slurm starts its daemons with srun, as here.
    for _ in range(100):
        steps = (await api("show", job_id=job_id))["steps"]
        if len(steps) >= 2 and all(s["ended"] for s in steps):
            break
        await asyncio.sleep(0.1)
    first = steps[0]
    assert (first["command"], first["ntasks"], first["exit_code"]) == (
        "sh -c 'echo T$SLURM_PROCID@$HPCBATCH_NODE_INDEX'",
        4,
        0,
    ), steps
    assert steps[1]["command"].startswith("orted") and steps[1]["ended"], steps  # closed at the end
    await until(lambda: all(not h.holders for h in c.cluster.hosts.values()), what="released")


def pty_session(c: Controller) -> str:
    child = spawn(c, "run", "--pty", "sh", rows=33, cols=101)
    child.expect(r"\$ |PROMPT> |# ")
    child.sendline("stty size; tty; read x; echo got-$x-$((6*7))")
    child.sendline("typed")
    child.expect("got-typed-42")
    seen = child.before
    child.setwinsize(40, 120)
    child.sendline("stty size")
    child.expect("40 120")
    child.sendline("exit 3")
    child.expect(pexpect.EOF)
    child.close()
    return f"{child.exitstatus}\n{seen}"


async def test_run_pty_is_a_real_terminal_on_a_node(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    out = await asyncio.to_thread(pty_session, c)
    code, seen = out.split("\n", 1)
    assert code == "3", out
    assert "33 101" in seen and "/dev/pts/" in seen, seen
    jobs = await api("jobs", all=True)
    (final,) = await api.wait(jobs[-1]["id"])
    assert final["state"] == "FAILED" and "run --pty ended" in final["reason"], final
    await until(lambda: all(not h.holders for h in c.cluster.hosts.values()), what="released")
