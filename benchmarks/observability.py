"""Observability overhead: end-to-end throughput with metrics, a webhook and an events
follower attached, against none, in one run.

One 4-host sandbox (real sshd on loopback); the controller in its own process,
started afresh for each round, alternately:

* `none`: the inventory as it is (no metrics address, no webhook, nobody
  following events);
* `observed`: `[metrics] address` scraped once a second (Prometheus scrapes
  every 15 s by default: this is 15 times harsher), a `[[webhooks]]` entry for
  every event (a local HTTP server that answers 204), and an `hpcbatch events`
  stream followed for the whole round.

Each round submits `--jobs` trivial jobs (`true`) pipelined over one API
connection and waits until all are final: throughput is jobs / (first submit
to last final). Rounds alternate so that the machine's drift hits both alike;
the figure is the median of each mode's rounds, and the overhead is
1 - observed/none (target: at most 10%).

Run: `.venv/bin/python benchmarks/observability.py [--jobs 400] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import statistics
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hpcbatch.client import Client
from hpcbatch.sandbox import Sandbox, missing_prerequisites, temporary_sandbox

HERE = Path(__file__).resolve().parent
SCRIPT = "#!/bin/sh\ntrue\n"


def _dispatch() -> Any:
    """benchmarks/dispatch.py's controller process and its helpers (not a package)."""
    spec = importlib.util.spec_from_file_location("bench_dispatch", HERE / "dispatch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_dispatch"] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HookSink(ThreadingHTTPServer):
    """The webhook's receiver: counts POSTs, answers 204."""

    daemon_threads = True

    def __init__(self) -> None:
        self.posts = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keeps connections open, as servers do

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                sink.posts += 1
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)


class Attachments:
    """The metrics scraper and the events follower of one `observed` round."""

    def __init__(self, socket_path: Path, metrics_port: int) -> None:
        self.stop = threading.Event()
        self.events = 0
        self.scrapes = 0
        self._threads = [
            threading.Thread(target=self._follow, args=(socket_path,), daemon=True),
            threading.Thread(target=self._scrape, args=(metrics_port,), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _follow(self, socket_path: Path) -> None:
        with Client(socket_path, timeout=None) as client:
            for _event in client.stream("events", follow=True):
                self.events += 1
                if self.stop.is_set():
                    return

    def _scrape(self, port: int) -> None:
        while not self.stop.wait(1.0):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    r.read()
            except OSError:
                return  # the controller stopped
            self.scrapes += 1

    def close(self) -> None:
        self.stop.set()


def cpu_s(pid: int) -> float:
    """The process's CPU time so far (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(bench: Any, sb: Sandbox, inventory: Path, jobs: int) -> tuple[float, float]:
    ctl = bench.ControllerProcess(sb)
    ctl.argv[ctl.argv.index(str(sb.inventory))] = str(inventory)
    try:
        ctl.start()
        return run_jobs(bench, ctl, jobs)
    finally:
        ctl.stop()
        ctl.cleanup(keep_log=False)


def run_jobs(bench: Any, ctl: Any, jobs: int) -> tuple[float, float]:
    """Submit `jobs` trivial jobs, wait for all: (jobs per second, controller CPU ms per job)."""
    with ctl.client(timeout=300) as client:
        c0 = cpu_s(ctl.pid)
        t0 = time.perf_counter()
        many = [{"request": {"script": SCRIPT, "name": "obs"}}] * jobs
        ids = [r["job_id"] for r in client.pipeline("submit", many) if isinstance(r, dict)]
        if len(ids) != jobs:
            raise bench.BenchError(f"only {len(ids)} of {jobs} submissions accepted")
        finals = client.call("wait", job_ids=ids, timeout_s=600)
        elapsed = time.perf_counter() - t0
        cpu = cpu_s(ctl.pid) - c0
    bad = [j for j in finals if j["state"] != "SUCCEEDED"]
    if bad:
        raise bench.BenchError(f"{len(bad)} jobs did not succeed, e.g. {bad[0]}")
    return jobs / elapsed, cpu * 1000 / jobs


WEBHOOK_EVENTS: list[str] = []  # --webhook-events: empty, every event


def observed_inventory(sb: Sandbox, where: Path, metrics_port: int, hook_port: int) -> Path:
    path = where / "observed.toml"
    path.write_text(
        sb.inventory.read_text()
        + f'\n[metrics]\naddress = "127.0.0.1:{metrics_port}"\n'
        + f'\n[[webhooks]]\nname = "bench"\nurl = "http://127.0.0.1:{hook_port}/"\n'
        + 'secret = "benchmark-secret-0123456789"\n'
        + f"events = {WEBHOOK_EVENTS!r}\n".replace("'", '"')
    )
    return path


def observed_round(
    bench: Any, sb: Sandbox, where: Path, jobs: int
) -> tuple[tuple[float, float], str]:
    hooks = HookSink()
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    metrics_port = free_port()
    inventory = observed_inventory(sb, where, metrics_port, hooks.server_address[1])
    attached: list[Attachments] = []
    rate = _observed(bench, sb, inventory, jobs, metrics_port, attached)
    a = attached[0]
    a.close()
    hooks.shutdown()
    hooks.server_close()
    return rate, f"{a.events} events followed, {hooks.posts} webhook POSTs, {a.scrapes} scrapes"


def _observed(
    bench: Any, sb: Sandbox, inventory: Path, jobs: int, port: int, attached: list[Attachments]
) -> tuple[float, float]:
    ctl = bench.ControllerProcess(sb)
    ctl.argv[ctl.argv.index(str(sb.inventory))] = str(inventory)
    try:
        ctl.start()
        attached.append(Attachments(ctl.socket, port))
        time.sleep(0.2)  # the follower is subscribed
        return run_jobs(bench, ctl, jobs)
    finally:
        time.sleep(1.0)
        ctl.stop()
        ctl.cleanup(keep_log=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--webhook-events",
        default="",
        help="the webhook's event filter, e.g. SUCCEEDED,FAILED (default: every event)",
    )
    args = parser.parse_args()
    WEBHOOK_EVENTS[:] = [w for w in args.webhook_events.split(",") if w]
    missing = missing_prerequisites()
    if missing:
        print(f"cannot run: {missing}", file=sys.stderr)
        return 2
    bench = _dispatch()
    rates: dict[str, list[float]] = {"none": [], "observed": []}
    cpus: dict[str, list[float]] = {"none": [], "observed": []}
    with temporary_sandbox() as sb:
        where = Path(sb.inventory).parent
        for r in range(args.rounds):
            rate, cpu = one_round(bench, sb, sb.inventory, args.jobs)
            rates["none"].append(rate)
            cpus["none"].append(cpu)
            print(f"round {r + 1} none:     {rate:7.1f} jobs/s, {cpu:5.2f} ms CPU/job", flush=True)
            (rate, cpu), what = observed_round(bench, sb, where, args.jobs)
            rates["observed"].append(rate)
            cpus["observed"].append(cpu)
            print(
                f"round {r + 1} observed: {rate:7.1f} jobs/s, {cpu:5.2f} ms CPU/job ({what})",
                flush=True,
            )
    print()
    print(f"{args.jobs} trivial jobs per round, {args.rounds} rounds each, 4 sshd hosts,")
    print(f"webhook events: {', '.join(WEBHOOK_EVENTS) or 'all'}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end")
    for mode in ("none", "observed"):
        r, c = rates[mode], cpus[mode]
        print(
            f"  {mode + ':':<9} {statistics.median(r):7.1f} jobs/s (median of "
            f"{', '.join(f'{x:.1f}' for x in r)}); controller {statistics.median(c):.2f} ms CPU/job"
        )
    overhead = 1 - statistics.median(rates["observed"]) / statistics.median(rates["none"])
    cpu_more = statistics.median(cpus["observed"]) / statistics.median(cpus["none"]) - 1
    print(f"  throughput overhead: {overhead * 100:.1f}% (target: at most 10%)")
    print(f"  controller CPU per job: {cpu_more * 100:+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
