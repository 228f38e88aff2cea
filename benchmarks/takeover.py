"""Take-over time: from SIGKILL of the active controller to the first job started by the standby.

One 4-host sandbox (real sshd on loopback), one private PostgreSQL server
(tests/postgres_server.py), and two controller processes on one database:
the active one and a standby (`controller --standby`). Each run: a job is
running under the active controller; SIGKILL it; the standby takes the
store's lock, reconnects to the hosts and collects that job; the figure is
the time until a job submitted to the new controller is seen started (its
state past RUNNABLE, polled every 20 ms). The killed controller is restarted
as the next run's standby. Reported: median, min and max over --runs (10),
and the SIGSTOP case's median (the lease: the server ends the silent session
after LEASE_S) over --stop-runs (3).

    .venv/bin/python benchmarks/takeover.py [--runs 10] [--stop-runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.postgres_server

from hpcbatch.client import Client, ClientError
from hpcbatch.sandbox import Sandbox, missing_prerequisites, temporary_sandbox
from hpcbatch.store.postgres import LEASE_S
from tests.postgres_server import TemporaryPostgres, missing

STARTED = {"STARTING", "RUNNING", "SUCCEEDED", "FAILED"}


class Ctl:
    def __init__(self, sb: Sandbox, store: str, standby: bool) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="hb-to-", dir="/tmp"))
        self.socket = self.home / "controller.sock"
        argv = [
            sys.executable, "-m", "hpcbatch.cli.main", "--home", str(self.home), "controller",
            "--inventory", str(sb.inventory), "--store", store, "--log-level", "warning",
        ]  # fmt: skip
        if standby:
            argv.append("--standby")
        with open(self.home / "controller.log", "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    def call(self, op: str, **args: Any) -> Any:
        with Client(self.socket, timeout=60) as c:
            return c.call(op, **args)

    def up(self) -> bool:
        try:
            self.call("ping")
        except (ClientError, OSError):
            return False
        return True

    def wait_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.up():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((self.home / "controller.log").read_text()[-2000:])
            time.sleep(0.02)

    def end(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)


def one(active: Ctl, standby: Ctl, how: signal.Signals) -> float:
    job = active.call("submit", request={"script": "#!/bin/sh\nsleep 2\n"})["job_id"]
    while active.call("show", job_id=job)["state"] not in STARTED:
        time.sleep(0.02)
    time.sleep(2.0)  # the standby has been waiting a while, as in life
    t0 = time.perf_counter()
    os.kill(active.proc.pid, how)
    standby.wait_up()
    first = standby.call("submit", request={"script": "#!/bin/sh\ntrue\n"})["job_id"]
    while standby.call("show", job_id=first)["state"] not in STARTED:
        time.sleep(0.02)
    took = time.perf_counter() - t0
    standby.call("wait", job_ids=[job, first], timeout_s=60)
    return took


def series(sb: Sandbox, url: str, runs: int, how: signal.Signals) -> list[float]:
    active = Ctl(sb, url, standby=False)
    active.wait_up()
    standby = Ctl(sb, url, standby=True)
    times = []
    try:
        for i in range(runs):
            times.append(one(active, standby, how))
            print(f"  {how.name} run {i + 1}/{runs}: {times[-1]:.2f} s", flush=True)
            active.end()
            active, standby = standby, Ctl(sb, url, standby=True)
    finally:
        active.end()
        standby.end()
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--stop-runs", type=int, default=3)
    args = p.parse_args(argv)
    why = missing_prerequisites() + ([missing()] if missing() else [])
    if why:
        print("missing: " + ", ".join(str(w) for w in why), file=sys.stderr)
        return 2
    with temporary_sandbox(hosts=4, gpu_hosts=0) as sb, TemporaryPostgres(durable=True) as pg:
        kills = series(sb, pg.url(pg.create_database("takeover")), args.runs, signal.SIGKILL)
        stops = (
            series(sb, pg.url(pg.create_database("stop")), args.stop_runs, signal.SIGSTOP)
            if args.stop_runs
            else []
        )
    print(f"\nload {os.getloadavg()[0]:.2f}; 4 sandbox hosts; PostgreSQL on a Unix socket")
    print(f"{'case':44} {'median':>8} {'min':>6} {'max':>6}")
    for name, xs in (("SIGKILL -> first job started by the new one", kills),
                     (f"SIGSTOP -> ditto (lease {LEASE_S:.0f} s)", stops)):  # fmt: skip
        if xs:
            print(f"{name:44} {statistics.median(xs):7.2f}s {min(xs):5.2f}s {max(xs):5.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
