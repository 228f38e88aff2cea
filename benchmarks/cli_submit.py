"""`hpcbatch submit` as a process: the quick entry point against the full CLI, in one run.

On a 2-host sandbox with the controller in its own process and the queue
disabled (only acceptance is timed), each command is run `--runs` times,
interleaved round by round so that the machine's load touches each alike:

  python -c pass        the interpreter's own start-up, with `site`
  python -S -c pass     the same without `site` (the launcher's floor)
  quick submit          the launcher `make venv` writes (`python -S`, cli.quick ->
                        the controller's submit_argv)
  full submit           the previous entry point: pip's wrapper of cli.main:main
                        (imports `site` and `re`, parses in the process)
  quick/full array      `submit --array=0-999 --wrap true` both ways (cancelled
                        every round)

Prints the median, p90 and minimum of each, and the quick path's ratios to
the full CLI and to `python -c pass`. Slurm's `sbatch` beside it:
benchmarks/vs_slurm.py.

    .venv/bin/python benchmarks/cli_submit.py [--runs 100] [--array-runs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dispatch import machine_info, percentile, running_controller

from hpcbatch.cli.quick import write_launcher
from hpcbatch.sandbox import missing_prerequisites, temporary_sandbox

# What pip writes for `hpcbatch = "hpcbatch.cli.main:main"` (distlib's template).
PIP_WRAPPER = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from hpcbatch.cli.main import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, check=False)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {out.stderr.decode(errors='replace').strip()}")
    return took


def row(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name:34} {statistics.median(ms):8.1f} {percentile(ms, 90):8.1f} {min(ms):8.1f}"
        f"   (n={len(ms)})"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--array-runs", type=int, default=20)
    args = p.parse_args(argv)
    missing = missing_prerequisites()
    if missing:
        print("missing: " + ", ".join(missing), file=sys.stderr)
        return 2
    info = machine_info()
    py = sys.executable
    with (
        tempfile.TemporaryDirectory(prefix="hb-cli-") as tmp,
        temporary_sandbox(hosts=2, gpu_hosts=0) as sb,
        running_controller(sb, None) as ctl,
    ):
        quick, full = Path(tmp) / "hpcbatch-quick", Path(tmp) / "hpcbatch-full"
        write_launcher(str(quick))
        full.write_text(PIP_WRAPPER.format(python=py))
        full.chmod(0o755)
        with ctl.client() as c:
            c.call("queue_update", queue="batch", state="DISABLED")
        home = ["--home", str(ctl.home)]
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "python -S -c pass": [py, "-S", "-c", "pass"],
            "quick submit --wrap true": [str(quick), *home, "submit", "--wrap", "true"],
            "full submit --wrap true": [str(full), *home, "submit", "--wrap", "true"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                times[name].append(timed(cmd))
        arrays = {
            "quick submit --array=0-999": [str(quick), *home, "submit", "--array=0-999"],
            "full submit --array=0-999": [str(full), *home, "submit", "--array=0-999"],
        }
        for name in arrays:
            times[name] = []
        for _ in range(args.array_runs):
            for name, cmd in arrays.items():
                times[name].append(timed([*cmd, "--wrap", "true"]))
                with ctl.client(timeout=300) as c:
                    c.call("cancel", queue="batch")
    print(
        f"machine: {info.get('cpu')} x{os.cpu_count()}, python {info.get('python')}, "
        f"commit {info.get('git')}, load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'command':34} {'median':>8} {'p90':>8} {'min':>8}   (ms)")
    for name, values in times.items():
        print(row(name, values))
    med = {name: statistics.median(v) for name, v in times.items()}
    print(
        f"quick submit: {med['full submit --wrap true'] / med['quick submit --wrap true']:.2f}x "
        f"faster than the full CLI, {med['quick submit --wrap true'] / med['python -c pass']:.2f}x "
        f"`python -c pass`; array: "
        f"{med['full submit --array=0-999'] / med['quick submit --array=0-999']:.2f}x faster"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
