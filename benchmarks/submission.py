"""Submission benchmark: how fast hpcbatch accepts work (issue 3's figures).

On a fresh 2-host sandbox with the controller in its own process, with the
queue disabled so that nothing runs and only acceptance is timed:

1. 1,000 separate submissions through the API (one connection, back to back);
2. separate submissions through the CLI (`hpcbatch submit --wrap true`, a new
   process each), the user-visible rate;
3. one 10,000-child array from the CLI (`hpcbatch submit --array=0-9999`),
   wall time end to end (process start to "Submitted").

Afterwards everything is cancelled with one filter (`cancel -p batch`), timed too.

Run: `.venv/bin/python benchmarks/submission.py [--api-jobs 1000] [--cli-jobs 200]
[--array 10000]`. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dispatch import BenchError, machine_info, running_controller

from hpcbatch.sandbox import missing_prerequisites, temporary_sandbox


def cli(ctl_home: Path, *args: str) -> tuple[float, str]:
    """`hpcbatch ARGS` through the venv's entry point (the launcher `make venv` writes)."""
    exe = Path(sys.executable).parent / "hpcbatch"
    prefix = [str(exe)] if exe.exists() else [sys.executable, "-m", "hpcbatch.cli.quick"]
    argv = [*prefix, "--home", str(ctl_home), *args]
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise BenchError(f"{' '.join(args)} failed: {out.stderr.strip()}")
    return took, out.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--api-jobs", type=int, default=1000)
    p.add_argument("--cli-jobs", type=int, default=200)
    p.add_argument("--array", type=int, default=10_000)
    args = p.parse_args(argv)
    missing = missing_prerequisites()
    if missing:
        print("missing: " + ", ".join(missing), file=sys.stderr)
        return 2
    info = machine_info()
    print(f"machine: {info.get('cpu')} x{os.cpu_count()}, python {info.get('python')}")
    with temporary_sandbox(hosts=2, gpu_hosts=0) as sb, running_controller(sb, None) as ctl:
        with ctl.client() as c:
            c.call("queue_update", queue="batch", state="DISABLED")
            request = {"script": "#!/bin/sh\ntrue\n", "name": "bench"}
            t0 = time.perf_counter()
            for _ in range(args.api_jobs):
                c.call("submit", request=request)
            api_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            results = c.pipeline("submit", [{"request": request}] * args.api_jobs)
            piped_s = time.perf_counter() - t0
            assert all(not isinstance(r, Exception) for r in results), results[:3]
        print(
            f"API, pipelined (Client.pipeline, 128 in flight): {args.api_jobs} submissions in "
            f"{piped_s:.2f} s = {args.api_jobs / piped_s:.0f} jobs/s"
        )
        print(
            f"API: {args.api_jobs} separate submissions in {api_s:.2f} s = "
            f"{args.api_jobs / api_s:.0f} jobs/s ({api_s / args.api_jobs * 1000:.2f} ms each)"
        )
        cli_times = [cli(ctl.home, "submit", "--wrap", "true")[0] for _ in range(args.cli_jobs)]
        total = sum(cli_times)
        median_ms = sorted(cli_times)[len(cli_times) // 2] * 1000
        print(
            f"CLI: {args.cli_jobs} separate `hpcbatch submit` in {total:.2f} s = "
            f"{args.cli_jobs / total:.1f} jobs/s (median {median_ms:.0f} ms each)"
        )
        took, out = cli(ctl.home, "submit", f"--array=0-{args.array - 1}", "--wrap", "true")
        print(
            f"CLI: one {args.array}-child array submitted in {took * 1000:.0f} ms ({out.strip()})"
        )
        t0 = time.perf_counter()
        with ctl.client(timeout=300) as c:
            results = c.call("cancel", queue="batch")
        print(
            f"cancel -p batch: {len(results)} jobs cancelled in "
            f"{(time.perf_counter() - t0) * 1000:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
