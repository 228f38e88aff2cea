"""`hpcbatch run --pty true` round trip against `ssh -tt host true` through a ControlMaster.

One run brings up a temporary 1-host sandbox and a controller in this process.
Both commands run in a real pseudo-terminal (pexpect), as a user types them:

* hpcbatch: `hpcbatch run --pty true`: submit a job that holds the node, wait
  until it runs, start `true` there on a pty through the controller and the
  host's agent, relay its end, release the node;
* ssh: `ssh -tt -F CFG node1 true` over an already open ControlMaster
  connection (`ControlPersist`), the fastest interactive path plain SSH has.

The figure is the median wall time of each (the first of each warms up) and
the ratio hpcbatch/ssh.

Run: `.venv/bin/python benchmarks/run_pty.py [--runs 10] [--json PATH]`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import pexpect
from gang_launch import compare_main, running_controller

from hpcbatch.sandbox import Sandbox, temporary_sandbox


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    child = pexpect.spawn(argv[0], argv[1:], env=env, timeout=60)
    child.expect(pexpect.EOF)
    child.close()
    elapsed = time.perf_counter() - t0
    if child.exitstatus != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({child.exitstatus}): {child.before!r}")
    return elapsed


def ssh_argv(sb: Sandbox) -> list[str]:
    control = sb.root / "cm-%C"
    return ["ssh", "-tt", "-F", str(sb.ssh_config), "-o", "ControlMaster=auto",
            "-o", f"ControlPath={control}", "-o", "ControlPersist=120",
            sb.hosts[0].name, "true"]  # fmt: skip


async def main_async(runs: int) -> dict[str, Any]:
    with temporary_sandbox(hosts=1, gpu_hosts=0) as sb:
        env = {**os.environ, "TERM": "xterm"}
        ssh = ssh_argv(sb)
        ssh_s = [await asyncio.to_thread(timed, ssh, env) for _ in range(runs + 1)][1:]
        stop = [*ssh[:-2], "-O", "exit", sb.hosts[0].name]
        await asyncio.to_thread(subprocess.run, stop, capture_output=True)
        async with running_controller(sb) as (c, _):
            env["HPCBATCH_SOCKET"] = str(c.settings.socket)
            argv = [sys.executable, "-m", "hpcbatch.cli.main", "run", "--pty", "true"]
            hb = [await asyncio.to_thread(timed, argv, env) for _ in range(runs + 1)][1:]
    return {"runs": runs, "ssh_s": ssh_s, "hpcbatch_s": hb,
            "ratio": statistics.median(hb) / statistics.median(ssh_s)}  # fmt: skip


def main() -> int:
    r = compare_main(
        __doc__,
        main_async,
        "interactive round trip of `true` on a pty, 1 sandbox host, {runs} runs each\n"
        "(s, median [min-max])",
        (("ssh -tt (ControlMaster)", "ssh_s"), ("hpcbatch run --pty", "hpcbatch_s")),
        "ratio hpcbatch/ssh: {ratio:.2f}",
    )
    return 1 if r is None else 0


if __name__ == "__main__":
    sys.exit(main())
