"""Scale benchmark: the controller against 1,000 and 5,000 simulated SSH hosts.

For each size N (`--hosts 1000,5000`) it starts N simulated hosts
(`hpcbatch.transport.sim`: a real asyncssh server per host on its own
loopback address, host-key checked against a known_hosts file, with a
simulated agent that speaks the real agent protocol and "runs" jobs as
timers), then the controller as its own process on the generated inventory
(`python -m hpcbatch.cli.main --home DIR controller --inventory ...`,
unchanged code path), and measures:

1. start-up: controller process start to every host UP (polling `stats`);
2. controller RSS (VmRSS/VmHWM) and CPU time (/proc/PID/stat) at each phase;
3. `--jobs` jobs queued while the queue is disabled (arrays of 10,000
   children, the rest plain jobs pipelined), each "running" `sleep D` with D
   in 0..1 s; then the queue is enabled and every job runs: throughput from
   the jobs' end times (sustained: between the 10% and 90% ends), the
   scheduler's pass times (`stats`), the latency of one submit made when a
   quarter is done, and the controller's CPU and peak RSS meanwhile;
   meanwhile an API probe issues `submit`, `jobs` and `show` in turn, five
   rounds a second, from the enable to the last job's end: p50/p99/max of
   each (what a user waits for while passes over the whole queue run); then
   the correctness checks: every job SUCCEEDED, each started exactly once
   (one attempt, one STARTING transition), every probe job among them;
4. heartbeat lag: `--blackhole` hosts go silent (no agent output, no SSH
   reads); time from each one's last byte to the controller marking it not
   UP (seen on the `watch` stream), against the configured limit.

Prints one table with a column per size. Run:
    .venv/bin/python benchmarks/scale.py --hosts 1000,5000 --jobs 50000
    .venv/bin/python benchmarks/scale.py --quick     # 100 hosts, 2,000 jobs
See docs/scale.md for what each figure means and measured results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hpcbatch.client import Client, ClientError
from hpcbatch.transport.link import LinkSettings
from hpcbatch.transport.sim.cluster import SimCluster

TICK = os.sysconf("SC_CLK_TCK")
ARRAY_MAX = 10_000
DURATIONS = ("0", "0.25", "0.5", "0.75", "1")  # seconds: one array (or share) each
QUEUE = "batch"
PROBE = "scale-probe"  # not counted in the throughput


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


# --------------------------------------------------------------------------- /proc


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# --------------------------------------------------------------------------- controller


class Controller:
    """The controller as a child process, on a simulated cluster's inventory."""

    def __init__(
        self, inventory: Path, heartbeat_s: float, down_after_s: float, profile: Path | None
    ) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="hb-scale-", dir="/tmp"))
        self.socket = self.home / "controller.sock"
        self.log_path = self.home / "controller.log"
        prefix = [sys.executable]
        if profile is not None:
            prefix += ["-m", "cProfile", "-o", str(profile)]
        self.argv = [
            *prefix, "-m", "hpcbatch.cli.main", "--home", str(self.home), "controller",
            "--inventory", str(inventory), "--log-level", "warning",
            "--heartbeat", f"{heartbeat_s:g}", "--down-after", f"{down_after_s:g}",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"the controller exited ({self.proc.returncode}):\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return "(no log)"

    def client(self, timeout: float = 300.0) -> Client:
        self.check()
        return Client(self.socket, timeout=timeout)

    def stats(self) -> dict[str, Any]:
        with self.client(60) as c:
            return dict(c.call("stats"))

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.proc = None

    def job_ends(self) -> list[float]:
        """Every job's end time (not array parents), from the store."""
        db = sqlite3.connect(f"file:{self.home / 'hpcbatch.db'}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT ended FROM jobs WHERE ended IS NOT NULL AND name != ? AND id NOT IN "
                "(SELECT array_parent FROM jobs WHERE array_parent IS NOT NULL)",
                (PROBE,),
            ).fetchall()
        finally:
            db.close()
        return [float(r[0]) for r in rows]

    def job_states(self) -> dict[str, int]:
        """Final count by state of every job but array parents, read from the store."""
        db = sqlite3.connect(f"file:{self.home / 'hpcbatch.db'}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT state, count(*) FROM jobs WHERE name != ? AND id NOT IN (SELECT "
                "array_parent FROM jobs WHERE array_parent IS NOT NULL) GROUP BY state",
                (PROBE,),
            ).fetchall()
        finally:
            db.close()
        return {str(s): int(n) for s, n in rows}

    def exactly_once(self, probes: list[int]) -> list[str]:
        """What is wrong, if anything: a job (array parents aside) not started exactly
        once (one attempt row, one transition into STARTING), a probe job lost or not
        SUCCEEDED. Empty when every job ran once."""
        db = sqlite3.connect(f"file:{self.home / 'hpcbatch.db'}?mode=ro", uri=True)
        try:
            children = "(SELECT array_parent FROM jobs WHERE array_parent IS NOT NULL)"
            wrong = db.execute(
                "SELECT j.id, (SELECT count(*) FROM attempts a WHERE a.job_id = j.id),"
                " (SELECT count(*) FROM transitions t WHERE t.job_id = j.id"
                f"  AND t.new = 'STARTING') FROM jobs j WHERE j.id NOT IN {children}"
            ).fetchall()
            probe_states = dict(
                db.execute("SELECT id, state FROM jobs WHERE name = ?", (PROBE,)).fetchall()
            )
        finally:
            db.close()
        problems = [f"job {i}: {a} attempts, {t} starts" for i, a, t in wrong if (a, t) != (1, 1)]
        lost = [i for i in probes if probe_states.get(i) != "SUCCEEDED"]
        if lost:
            problems.append(f"{len(lost)} probe jobs not SUCCEEDED, e.g. {lost[:5]}")
        return problems


# --------------------------------------------------------------------------- phases


def wait_all_up(ctl: Controller, n: int, timeout: float) -> dict[str, Any]:
    first_up: float | None = None
    deadline = time.monotonic() + timeout
    while True:
        ctl.check()
        st: dict[str, Any] | None = None
        if ctl.socket.exists():
            with contextlib.suppress(ClientError, OSError):
                st = ctl.stats()
        now = time.monotonic()
        if st is not None:
            up = int(st["hosts"].get("UP", 0))
            if up and first_up is None:
                first_up = now - ctl.started
            if up >= n:
                return {"all_up_s": now - ctl.started, "first_up_s": first_up, "stats": st}
        if now > deadline:
            raise BenchError(f"only {st and st['hosts']} of {n} hosts UP after {timeout:.0f} s")
        time.sleep(0.2)


def requests_for(jobs: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Arrays of up to 10,000 children, and the remainder (under 1,000) as plain jobs."""
    arrays: list[dict[str, Any]] = []
    left, i = jobs, 0
    while left >= 1000:
        size = min(ARRAY_MAX, left)
        d = DURATIONS[i % len(DURATIONS)]
        arrays.append({"script": f"#!/bin/sh\nsleep {d}\n", "name": f"scale-a{i}",
                       "array": f"0-{size - 1}"})  # fmt: skip
        left -= size
        i += 1
    plain = [
        {
            "request": {
                "script": f"#!/bin/sh\nsleep {DURATIONS[k % len(DURATIONS)]}\n",
                "name": "scale-p",
            }
        }
        for k in range(left)
    ]
    return arrays, plain


def submit(ctl: Controller, jobs: int) -> dict[str, Any]:
    arrays, plain = requests_for(jobs)
    t0 = time.perf_counter()
    with ctl.client() as c:
        for req in arrays:
            c.call("submit", request=req)
        refused = [r for r in c.pipeline("submit", plain) if isinstance(r, ClientError)]
    if refused:
        raise BenchError(f"{len(refused)} submissions refused: {refused[0]}")
    took = time.perf_counter() - t0
    return {"submit_s": took, "arrays": len(arrays), "plain": len(plain)}


class Sampler(threading.Thread):
    """Polls `stats` and /proc while the jobs run: peak RSS, the last stats seen."""

    def __init__(self, ctl: Controller) -> None:
        super().__init__(daemon=True)
        self.ctl = ctl
        self.stop = threading.Event()
        self.peak_rss = 0.0
        self.last: dict[str, Any] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.ctl.client(120) as c:
                while not self.stop.is_set():
                    self.last = dict(c.call("stats"))
                    self.peak_rss = max(self.peak_rss, rss_mb(self.ctl.pid))
                    self.stop.wait(0.5)
        except BaseException as exc:
            self.error = exc


class ApiProbe(threading.Thread):
    """Times `submit`, `jobs` and `show` while the jobs run: one of each in turn, five
    rounds a second, over its own connection. The probe jobs (`true`, name PROBE) are
    not counted in the throughput but must end SUCCEEDED like the others."""

    OPS = ("submit", "jobs", "show")

    def __init__(self, ctl: Controller, period_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.ctl = ctl
        self.period_s = period_s
        self.stop = threading.Event()
        self.samples: dict[str, list[float]] = {op: [] for op in self.OPS}
        self.submitted: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        request = {"script": "#!/bin/sh\ntrue\n", "name": PROBE}
        try:
            with self.ctl.client(300) as c:
                while not self.stop.is_set():
                    t = time.perf_counter()
                    reply = c.call("submit", request=request)
                    self.samples["submit"].append(time.perf_counter() - t)
                    self.submitted.append(int(reply["job_id"]))
                    t = time.perf_counter()
                    c.call("jobs", name=PROBE)
                    self.samples["jobs"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    c.call("show", job_id=self.submitted[-1])
                    self.samples["show"].append(time.perf_counter() - t)
                    self.stop.wait(self.period_s)
        except BaseException as exc:
            self.error = exc

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"probe_calls": sum(len(v) for v in self.samples.values())}
        every: list[float] = []
        for op, xs in self.samples.items():
            every += xs
            out.update({f"{op}_{k}_ms": v for k, v in percentiles(xs).items()})
        out.update({f"api_{k}_ms": v for k, v in percentiles(every).items()})
        return out


def percentiles(xs: list[float]) -> dict[str, float | None]:
    """p50, p99 and max of `xs` (seconds) in milliseconds; None where there is none."""
    if not xs:
        return {"p50": None, "p99": None, "max": None}
    s = sorted(xs)
    at = lambda q: 1000 * s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return {"p50": at(0.50), "p99": at(0.99), "max": 1000 * s[-1]}


def run_jobs(ctl: Controller, jobs: int, timeout: float) -> dict[str, Any]:
    """Queue every job (queue disabled), then enable the queue and wait until every job
    is final. Throughput comes from the jobs' end times in the store, counted from the
    enable. When a quarter is done, one more job is submitted: how long a user's submit
    takes while the controller is busy."""
    with ctl.client() as c:
        c.call("queue_update", queue=QUEUE, state="DISABLED", reason="scale benchmark")
    out = submit(ctl, jobs)
    print(f"    {jobs} jobs queued in {out['submit_s']:.1f} s", flush=True)
    sampler = Sampler(ctl)
    sampler.start()
    api = ApiProbe(ctl)
    cpu0 = cpu_s(ctl.pid)
    try:
        with ctl.client() as c:
            wall0, t0 = time.time(), time.monotonic()
            c.call("queue_update", queue=QUEUE, state="ENABLED")
        api.start()
        probe: float | None = None
        while True:
            time.sleep(0.2)
            if sampler.error is not None:
                raise BenchError(f"polling stats failed: {sampler.error}")
            if api.error is not None:
                raise BenchError(f"the API probe failed: {api.error}")
            if not api.stop.is_set() and ends_seen(sampler, jobs):
                api.stop.set()  # the last jobs are ending: stop adding probe jobs
            left = sum(int(v) for v in sampler.last.get("jobs", {"?": 1}).values())
            if probe is None and left and left <= 0.75 * jobs:
                with ctl.client() as c:
                    t = time.perf_counter()
                    c.call("submit", request={"script": "#!/bin/sh\ntrue\n", "name": PROBE})
                    probe = time.perf_counter() - t
            if left == 0 and sampler.last.get("array_parents") == 0:
                break
            if time.monotonic() - t0 > timeout:
                raise BenchError(f"jobs still active after {timeout:.0f} s: {sampler.last}")
    finally:
        api.stop.set()
        api.join()
        sampler.stop.set()
        sampler.join()
    wall = time.monotonic() - t0
    cpu = cpu_s(ctl.pid) - cpu0
    ends = sorted(e - wall0 for e in ctl.job_ends())
    if len(ends) != jobs:
        raise BenchError(f"{len(ends)} of {jobs} jobs have an end time")
    t10, t90 = ends[int(0.1 * jobs)], ends[int(0.9 * jobs) - 1]
    sched = ctl.stats()["scheduler"]
    passes = max(1, sched["passes"])
    return {
        **out,
        **api.figures(),
        "probe_ids": api.submitted,
        "probe_submit_s": probe,
        "run_s": wall,
        "overall_jobs_per_s": jobs / ends[-1],
        "sustained_jobs_per_s": 0.8 * jobs / (t90 - t10) if t90 > t10 else float("nan"),
        "cpu_s": cpu,
        "cpu_ms_per_job": cpu * 1000 / jobs,
        "cpu_util": cpu / wall,
        "peak_rss_mb": sampler.peak_rss,
        "passes": sched["passes"],
        "plan_mean_ms": 1000 * sched["total_plan_s"] / passes,
        "plan_max_ms": 1000 * sched["max_plan_s"],
        "pass_mean_ms": 1000 * sched["total_pass_s"] / passes,
        "pass_max_ms": 1000 * sched["max_pass_s"],
    }


def ends_seen(sampler: Sampler, jobs: int) -> bool:
    """Whether fewer than 1% of the benchmark's jobs are left (the probe stops then)."""
    left = sum(int(v) for v in sampler.last.get("jobs", {"?": jobs}).values())
    return left < max(1, jobs // 100)


class HostWatcher(threading.Thread):
    """Records when each watched host first leaves UP, from the controller's event stream."""

    def __init__(self, ctl: Controller, names: set[str]) -> None:
        super().__init__(daemon=True)
        self.names = names
        self.left_up: dict[str, float] = {}
        self.down: dict[str, float] = {}
        self.client = ctl.client(None)  # type: ignore[arg-type]
        self.ready = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(OSError, ClientError, ValueError):
            events = self.client.watch()
            self.ready.set()
            for ev in events:
                host = ev.get("host") if ev.get("event") == "host" else None
                if host and host["name"] in self.names and host["state"] != "UP":
                    self.left_up.setdefault(host["name"], time.time())
                    if host["state"] == "DOWN":
                        self.down.setdefault(host["name"], time.time())
        self.ready.set()


def heartbeat_lag(
    ctl: Controller, sim: SimCluster, k: int, heartbeat_s: float, down_after_s: float
) -> dict[str, Any]:
    """Silence k hosts; when each leaves UP (cut off: the controller's silence limit or
    the SSH keepalives, whichever first) and when it is DOWN, against their limits,
    counted from the last line its agent sent (the controller heard nothing after)."""
    link = LinkSettings()
    keepalive_limit = link.keepalive_s * (link.keepalive_count + 1)
    cut_limit = min(max(10.0, 4 * heartbeat_s), keepalive_limit)  # ControllerSettings' default
    step = max(1, len(sim.hosts) // k)
    names = [h["name"] for h in sim.hosts[::step][:k]]
    watcher = HostWatcher(ctl, set(names))
    watcher.start()
    watcher.ready.wait(10)
    time.sleep(0.5)
    silenced = sim.blackhole(names)
    deadline = time.monotonic() + down_after_s + 60
    while len(watcher.down) < len(names) and time.monotonic() < deadline:
        time.sleep(0.1)
    left, down = dict(watcher.left_up), dict(watcher.down)
    with contextlib.suppress(OSError):
        watcher.client.close()
    sim.restore(names)
    if len(down) < len(names):
        raise BenchError(f"only {len(down)} of {len(names)} black-holed hosts went DOWN")
    from_silence = [left[n] - silenced[n][0] for n in names]
    beyond_cut = [left[n] - silenced[n][1] - cut_limit for n in names]
    beyond_down = [down[n] - silenced[n][1] - down_after_s for n in names]
    return {
        "blackholed": len(names),
        "limit_s": cut_limit,
        "down_after_s": down_after_s,
        "lag_from_silence_s": (min(from_silence), max(from_silence)),
        "beyond_limit_s": (min(beyond_cut), max(beyond_cut)),
        "beyond_down_s": (min(beyond_down), max(beyond_down)),
    }


# --------------------------------------------------------------------------- one size


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"hb-sim{n}-", dir="/tmp"))
    out: dict[str, Any] = {"hosts": n, "jobs": args.jobs}
    profile = Path(args.profile).with_suffix(f".{n}.prof") if args.profile else None
    try:
        t = time.monotonic()
        with SimCluster(root / "sim", n, procs=args.sim_procs) as sim:
            out["sim_listen_s"] = time.monotonic() - t
            print(f"[{n}] {n} sim hosts listening in {len(sim.procs)} processes "
                  f"({out['sim_listen_s']:.1f} s)", flush=True)  # fmt: skip
            ctl = Controller(sim.inventory, args.heartbeat, args.down_after, profile)
            try:
                ctl.start()
                up = wait_all_up(ctl, n, args.up_timeout)
                out.update(all_up_s=up["all_up_s"], first_up_s=up["first_up_s"])
                out["connect_cpu_s"] = cpu_s(ctl.pid)
                time.sleep(args.settle)
                out["idle_rss_mb"] = rss_mb(ctl.pid)
                c0, t0 = cpu_s(ctl.pid), time.monotonic()
                time.sleep(args.settle)
                out["idle_cpu_util"] = (cpu_s(ctl.pid) - c0) / (time.monotonic() - t0)
                print(f"[{n}] all UP in {out['all_up_s']:.1f} s; idle RSS "
                      f"{out['idle_rss_mb']:.0f} MB, idle CPU {out['idle_cpu_util']:.0%}",
                      flush=True)  # fmt: skip
                out.update(run_jobs(ctl, args.jobs, args.run_timeout))
                states = ctl.job_states()
                out["job_states"] = states
                if states.get("SUCCEEDED", 0) != args.jobs:
                    raise BenchError(f"not every job SUCCEEDED: {states}")
                problems = ctl.exactly_once(out["probe_ids"])
                if problems:
                    raise BenchError(f"{len(problems)} problems: {'; '.join(problems[:10])}")
                out["exactly_once"] = f"{args.jobs + len(out['probe_ids'])} ok"
                print(f"[{n}] all {args.jobs} SUCCEEDED in {out['run_s']:.1f} s", flush=True)
                if args.blackhole:
                    out.update(
                        heartbeat_lag(ctl, sim, args.blackhole, args.heartbeat, args.down_after)
                    )
                out["final_rss_mb"] = rss_mb(ctl.pid)
                out["peak_rss_mb"] = max(out.get("peak_rss_mb", 0.0), rss_mb(ctl.pid, "VmHWM"))
                out["controller_cpu_s"] = cpu_s(ctl.pid)
                out["sim_cpu_s"] = sum(cpu_s(p) for p in sim.pids)
            except BaseException:
                print(f"controller log ({ctl.log_path}):\n{ctl.log_tail()}", file=sys.stderr)
                raise
            finally:
                ctl.stop()
                if not args.keep:
                    shutil.rmtree(ctl.home, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- table


def _fmt(v: Any, spec: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, tuple):
        return "..".join(format(x, spec) for x in v)
    return format(v, spec)


ROWS = [
    ("sim hosts listening (s)", "sim_listen_s", ".1f"),
    ("controller start -> first host UP (s)", "first_up_s", ".1f"),
    ("controller start -> all hosts UP (s)", "all_up_s", ".1f"),
    ("controller CPU to connect all (s)", "connect_cpu_s", ".1f"),
    ("RSS, all UP and idle (MB)", "idle_rss_mb", ".0f"),
    ("CPU, all UP and idle (of one core)", "idle_cpu_util", ".0%"),
    ("queue all jobs (queue disabled) (s)", "submit_s", ".1f"),
    ("queue enabled -> all SUCCEEDED (s)", "run_s", ".1f"),
    ("throughput, sustained 10%-90% (jobs/s)", "sustained_jobs_per_s", ".0f"),
    ("throughput, enable -> last end (jobs/s)", "overall_jobs_per_s", ".0f"),
    ("one submit while running (s)", "probe_submit_s", ".2f"),
    ("API probe: calls while running", "probe_calls", "d"),
    ("API probe: submit p50 (ms)", "submit_p50_ms", ".1f"),
    ("API probe: submit p99 (ms)", "submit_p99_ms", ".1f"),
    ("API probe: jobs p50 (ms)", "jobs_p50_ms", ".1f"),
    ("API probe: jobs p99 (ms)", "jobs_p99_ms", ".1f"),
    ("API probe: show p50 (ms)", "show_p50_ms", ".1f"),
    ("API probe: show p99 (ms)", "show_p99_ms", ".1f"),
    ("API probe: all calls p99 (ms)", "api_p99_ms", ".1f"),
    ("API probe: all calls max (ms)", "api_max_ms", ".1f"),
    ("every job final, started exactly once", "exactly_once", "s"),
    ("controller CPU per job (ms)", "cpu_ms_per_job", ".2f"),
    ("controller CPU while running (of one core)", "cpu_util", ".0%"),
    ("scheduling passes", "passes", "d"),
    ("scheduling pass, plan only: mean (ms)", "plan_mean_ms", ".1f"),
    ("scheduling pass, plan only: max (ms)", "plan_max_ms", ".1f"),
    ("scheduling pass, whole: mean (ms)", "pass_mean_ms", ".1f"),
    ("scheduling pass, whole: max (ms)", "pass_max_ms", ".1f"),
    ("RSS peak (MB)", "peak_rss_mb", ".0f"),
    ("heartbeat: hosts black-holed", "blackholed", "d"),
    ("heartbeat: silence limit, cut off (s)", "limit_s", ".0f"),
    ("heartbeat: silence -> not UP (s)", "lag_from_silence_s", ".2f"),
    ("heartbeat: cut off, beyond the limit (s)", "beyond_limit_s", ".2f"),
    ("heartbeat: --down-after (s)", "down_after_s", ".0f"),
    ("heartbeat: DOWN, beyond --down-after (s)", "beyond_down_s", ".2f"),
    ("sim processes' CPU, whole run (s)", "sim_cpu_s", ".0f"),
]


def print_table(results: list[dict[str, Any]]) -> None:
    width = max(len(r[0]) for r in ROWS)
    head = "".join(f"{str(r['hosts']) + ' hosts':>16}" for r in results)
    print()
    print(f"{'':<{width}}{head}")
    for label, key, spec in ROWS:
        print(f"{label:<{width}}" + "".join(f"{_fmt(r.get(key), spec):>16}" for r in results))
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(f"\ngrowth from {a['hosts']} to {b['hosts']} hosts ({b['hosts'] / a['hosts']:g}x):")
        for label, key in (("all UP", "all_up_s"), ("idle RSS", "idle_rss_mb"),
                           ("connect CPU", "connect_cpu_s"), ("plan mean", "plan_mean_ms"),
                           ("pass mean", "pass_mean_ms"), ("peak RSS", "peak_rss_mb"),
                           ("throughput", "sustained_jobs_per_s")):  # fmt: skip
            if a.get(key) and b.get(key):
                print(f"  {label}: x{b[key] / a[key]:.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", default="1000,5000", help="comma-separated cluster sizes")
    p.add_argument("--jobs", type=int, default=50_000, help="queued jobs per size")
    p.add_argument("--quick", action="store_true", help="100 hosts, 2,000 jobs (under a minute)")
    p.add_argument("--heartbeat", type=float, default=5.0, help="agent heartbeat interval, s")
    p.add_argument("--blackhole", type=int, default=20, help="hosts silenced for the lag (0: skip)")
    p.add_argument("--down-after", type=float, default=30.0, help="controller's --down-after, s")
    p.add_argument("--sim-procs", type=int, default=None, help="sim-host processes (N/1250)")
    p.add_argument("--up-timeout", type=float, default=600.0)
    p.add_argument("--run-timeout", type=float, default=1800.0)
    p.add_argument("--settle", type=float, default=3.0, help="idle seconds measured after UP")
    p.add_argument("--profile", help="cProfile the controller into PATH.<hosts>.prof")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = p.parse_args(argv)
    if args.quick:
        args.hosts, args.jobs, args.blackhole = "100", 2000, 5
    sizes = [int(x) for x in args.hosts.split(",") if x.strip()]
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at start "
          "(shared: figures are noisy)", flush=True)  # fmt: skip
    results = []
    try:
        for n in sizes:
            results.append(run_size(n, args))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if results:
            print_table(results)
        return 1
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
