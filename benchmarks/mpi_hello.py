"""MPI hello across 4 hosts: hpcbatch submit-to-finish against a raw `mpirun --host`.

One run brings up a temporary 4-host sandbox and a controller in this process.
hpcbatch: `examples/mpi/hello.sh` (4 nodes, 1 rank each, plain `mpirun`)
submitted as the CLI would, timed from the submit call until `wait` returns.
Raw: the same program launched directly, as one would without hpcbatch, on
the same hosts over OpenSSH (each sandbox host's address, port and key in a
generated ssh config): `mpirun --host A,B,C,D -np 4 --mca plm_rsh_agent "ssh
-F CFG" --mca btl self,tcp --mca pml ob1 --bind-to none --mca btl_tcp_if_include
lo --mca oob_tcp_if_include lo python3 hello.py`. The ratio is hpcbatch's
median over raw's median.

Run: `.venv/bin/python benchmarks/mpi_hello.py [--runs 10] [--json PATH]`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gang_launch import Api, compare_main, running_controller

from hpcbatch.cli.submit import build_submission
from hpcbatch.sandbox import Sandbox, temporary_sandbox

RAW_TIMEOUT_S = 30
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "mpi"


def raw_command(sb: Sandbox, cfg: Path) -> list[str]:
    addrs = ",".join(h.address for h in sb.hosts)
    argv = [
        "timeout", str(RAW_TIMEOUT_S), "mpirun", "--host", addrs, "-np", str(len(sb.hosts)),
        "--mca", "plm_rsh_agent", f"ssh -F {cfg}", "--mca", "btl", "self,tcp",
        "--mca", "pml", "ob1", "--bind-to", "none", "--mca", "btl_tcp_if_include", "lo",
        "--mca", "oob_tcp_if_include", "lo", "--mca", "plm_rsh_no_tree_spawn", "1",
    ]  # fmt: skip
    if os.geteuid() == 0:
        argv.append("--allow-run-as-root")
    return [*argv, "python3", str(EXAMPLES / "hello.py")]


def ssh_config(sb: Sandbox, path: Path) -> Path:
    """Host entries by address (mpirun names hosts by what --host says)."""
    text = sb.ssh_config.read_text()
    for h in sb.hosts:
        text = text.replace(f"Host {h.name}\n", f"Host {h.address}\n")
    path.write_text(text)
    return path


def run_raw(argv: list[str]) -> float | None:
    """Seconds, or None when it hung (killed by `timeout`): reported, not hidden."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMPI_")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # the hosts' python3 (it has mpi4py)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if proc.returncode == 124:
        return None
    if proc.returncode != 0 or "hosts: 4" not in proc.stdout:
        raise SystemExit(f"raw mpirun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed


async def run_hpcbatch(api: Api) -> float:
    sub = build_submission([str(EXAMPLES / "hello.sh")], None)
    request = dict(sub.request, submit_dir=str(EXAMPLES), time_limit_s=120)
    t0 = time.perf_counter()
    job_id = (await api("submit", request=request))["job_id"]
    (summary,) = await api("wait", job_ids=[job_id], timeout_s=150)
    elapsed = time.perf_counter() - t0
    out = (await api("logs", job_id=job_id))["data"]
    if summary["state"] != "SUCCEEDED" or "hosts: 4" not in out:
        raise SystemExit(f"hpcbatch job failed: {summary}\n{out}")
    return elapsed


async def main_async(runs: int) -> dict[str, Any]:
    with temporary_sandbox(hosts=4, gpu_hosts=0) as sb:
        argv = raw_command(sb, ssh_config(sb, sb.root / "ssh_config_by_address"))
        # Raw first, with no controller running (the first run of each warms up).
        tries = [run_raw(argv) for _ in range(runs + 1)][1:]
        raw = [t for t in tries if t is not None]
        async with running_controller(sb) as (_, api):
            hb = [await run_hpcbatch(api) for _ in range(runs + 1)][1:]
    return {"runs": runs, "raw_s": raw, "hpcbatch_s": hb, "raw_command": argv,
            "raw_hangs": len(tries) - len(raw),
            "ratio": statistics.median(hb) / statistics.median(raw)}  # fmt: skip


def main() -> int:
    r = compare_main(
        __doc__,
        main_async,
        "MPI hello, 4 ranks on 4 sandbox hosts, {runs} runs each (s, median [min-max])",
        (("raw mpirun --host (ssh)", "raw_s"), ("hpcbatch submit->done", "hpcbatch_s")),
        "ratio hpcbatch/raw: {ratio:.2f}",
        width=26,
    )
    if r is None:
        return 1
    if r["raw_hangs"]:
        hangs = r["raw_hangs"]
        print(f"  raw mpirun hung {hangs} times (killed after {RAW_TIMEOUT_S} s, left out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
