"""`hpcbatch run`'s stdin: what forwarding it costs, and how fast it streams.

One run brings up a temporary 2-host sandbox and a controller in this process,
then measures, through the real CLI as a user types it:

* latency: `hpcbatch run -N2 true < /dev/null` (stdin forwarded: the job's
  stdin is a pipe its agent holds, the CLI sends the EOF once the job runs)
  against `hpcbatch run -i none -N2 true` (no forwarding: the job's stdin is
  /dev/null, as before `run` forwarded it), interleaved, so both see the same
  load;
* throughput: 64 MiB piped into `hpcbatch run sha256sum` against the same bytes
  piped into `ssh -F CFG node1 sha256sum` through an open ControlMaster
  connection (the fastest way plain SSH has), in MiB/s of the whole command
  (job start included for hpcbatch), the digest checked.

Figures are medians with their spread (the first run of each warms up).

Run: `.venv/bin/python benchmarks/run_stdin.py [--runs 10] [--mib 64] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gang_launch import print_spread, running_controller

from hpcbatch.sandbox import missing_prerequisites, temporary_sandbox


def timed(argv: list[str], env: dict[str, str], data: bytes) -> tuple[float, bytes]:
    """Run argv with `data` on its stdin (then EOF); its wall time and its stdout."""
    t0 = time.perf_counter()
    out = subprocess.run(argv, input=data, capture_output=True, env=env, timeout=300, check=False)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr[-2000:]!r}")
    return elapsed, out.stdout


async def main_async(runs: int, mib: int) -> dict[str, Any]:
    blob = os.urandom(1 << 20) * mib
    digest = hashlib.sha256(blob).hexdigest()
    with temporary_sandbox(hosts=2, gpu_hosts=0) as sb:
        env = dict(os.environ)
        control = sb.root / "cm-%C"
        ssh = ["ssh", "-F", str(sb.ssh_config), "-o", "ControlMaster=auto",
               "-o", f"ControlPath={control}", "-o", "ControlPersist=300",
               sb.hosts[0].name]  # fmt: skip
        async with running_controller(sb) as (c, _):
            env["HPCBATCH_SOCKET"] = str(c.settings.socket)
            cli = [sys.executable, "-m", "hpcbatch.cli.main", "run"]
            fed, plain = [], []
            for i in range(runs + 1):
                t_fed, _ = await asyncio.to_thread(timed, [*cli, "-N2", "true"], env, b"")
                t_plain, _ = await asyncio.to_thread(
                    timed, [*cli, "-i", "none", "-N2", "true"], env, b""
                )
                if i:
                    fed.append(t_fed)
                    plain.append(t_plain)
            hb_rate, ssh_rate = [], []
            for i in range(min(runs, 5) + 1):
                t_hb, out = await asyncio.to_thread(timed, [*cli, "sha256sum"], env, blob)
                if out.split()[0].decode() != digest:
                    raise SystemExit(f"hpcbatch run sha256sum: wrong digest {out!r}")
                t_ssh, out = await asyncio.to_thread(timed, [*ssh, "sha256sum"], env, blob)
                if out.split()[0].decode() != digest:
                    raise SystemExit(f"ssh sha256sum: wrong digest {out!r}")
                if i:
                    hb_rate.append(mib / t_hb)
                    ssh_rate.append(mib / t_ssh)
            await asyncio.to_thread(
                subprocess.run, [*ssh[:-1], "-O", "exit", sb.hosts[0].name], capture_output=True
            )
    return {
        "runs": runs, "mib": mib,
        "run_fed_s": fed, "run_no_input_s": plain,
        "overhead_ratio": statistics.median(fed) / statistics.median(plain),
        "run_mib_s": hb_rate, "ssh_mib_s": ssh_rate,
        "throughput_ratio": statistics.median(hb_rate) / statistics.median(ssh_rate),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    missing = missing_prerequisites()
    if missing:
        print("needs: " + ", ".join(missing), file=sys.stderr)
        return 1
    r = asyncio.run(main_async(args.runs, args.mib))
    print(f"hpcbatch run -N2 true, 2 sandbox hosts, {args.runs} runs each (s, median [min-max])")
    print_spread("stdin forwarded", r["run_fed_s"])
    print_spread("-i none (not forwarded)", r["run_no_input_s"])
    print(f"  ratio forwarded/not: {r['overhead_ratio']:.2f}")
    n = len(r["run_mib_s"])
    print(f"{args.mib} MiB through stdin into sha256sum, {n} runs each (MiB/s, median [min-max])")
    print_spread("hpcbatch run", r["run_mib_s"])
    print_spread("ssh (ControlMaster)", r["ssh_mib_s"])
    print(f"  ratio hpcbatch/ssh: {r['throughput_ratio']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
