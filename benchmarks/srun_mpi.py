"""srun of a 4-rank MPI hello inside a running 2-node job, against a raw mpirun there.

One run brings up a temporary 2-host sandbox and a controller in this process,
and submits one job (2 nodes, 2 tasks per node) whose script alternates, RUNS+1
times each (the first pair warms up):

* `srun python3 hello.py`: hpcbatch's srun (it detects the mpi4py program,
  runs OpenMPI's mpirun over the step's nodes, maps the ranks to SLURM_PROCID);
* `mpirun -np 4 python3 hello.py`: the same program by the job's own mpirun,
  on the same hosts, through the same hpcbatch-rsh (what a user would type
  without srun).

Both are timed inside the job with `date +%s.%N`, so the figure is srun's own
cost, not scheduling. The ratio is srun's median over mpirun's (target <= 1.2).

Run: `.venv/bin/python benchmarks/srun_mpi.py [--runs 10] [--json PATH]`.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

from gang_launch import Api, compare_main, running_controller

from hpcbatch.sandbox import temporary_sandbox

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "mpi"
SCRIPT = """#!/bin/sh
t() { date +%s.%N; }
for i in $(seq 0 {runs}); do
  a=$(t); srun python3 hello.py > out.srun || exit 1; b=$(t)
  grep -q "hosts: 2" out.srun || {{ cat out.srun; exit 2; }}
  mpirun -np 4 python3 hello.py > out.mpirun || exit 1; c=$(t)
  grep -q "hosts: 2" out.mpirun || {{ cat out.mpirun; exit 3; }}
  echo "pair $i $a $b $c"
done
"""


async def measure(api: Api, runs: int, workdir: Path) -> dict[str, Any]:
    request = {
        "script": SCRIPT.replace("{runs}", str(runs)).replace("{{", "{").replace("}}", "}"),
        "nodes": 2, "ntasks_per_node": 2, "time_limit_s": 600, "workdir": str(workdir),
        "submit_dir": str(EXAMPLES),
    }  # fmt: skip
    job_id = (await api("submit", request=request))["job_id"]
    (summary,) = await api("wait", job_ids=[job_id], timeout_s=660)
    out = (await api("logs", job_id=job_id))["data"]
    if summary["state"] != "SUCCEEDED":
        err = (await api("logs", job_id=job_id, stream="stderr"))["data"]
        raise SystemExit(f"the benchmark job failed: {summary}\n{out}\n{err}")
    srun, mpirun = [], []
    for line in out.splitlines():
        if line.startswith("pair ") and not line.startswith("pair 0 "):
            _, _, a, b, c = line.split()
            srun.append(float(b) - float(a))
            mpirun.append(float(c) - float(b))
    return {"runs": runs, "srun_s": srun, "mpirun_s": mpirun,
            "ratio": statistics.median(srun) / statistics.median(mpirun)}  # fmt: skip


async def main_async(runs: int) -> dict[str, Any]:
    with temporary_sandbox(hosts=2, gpu_hosts=0) as sb:
        workdir = sb.root / "srun-bench"
        workdir.mkdir(mode=0o777)
        for name in ("hello.py",):
            (workdir / name).write_text((EXAMPLES / name).read_text())
        workdir.chmod(0o777)
        async with running_controller(sb) as (_, api):
            return await measure(api, runs, workdir)


def main() -> int:
    r = compare_main(
        __doc__,
        main_async,
        "MPI hello, 4 ranks on 2 sandbox hosts inside one job, {runs} runs each\n"
        "(s, median [min-max])",
        (("srun python3 hello.py", "srun_s"), ("mpirun -np 4 (raw)", "mpirun_s")),
        "ratio srun/mpirun: {ratio:.2f} (target <= 1.2)",
    )
    return 1 if r is None else 0


if __name__ == "__main__":
    sys.exit(main())
