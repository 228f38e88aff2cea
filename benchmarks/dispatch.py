"""Dispatch benchmark: how fast hpcbatch turns a submit into a finished job.

One run, on a fresh 4-host sandbox (real sshd on loopback) with the controller
in its own process, measures:

1. dispatch latency of sequential trivial jobs (`true`), end to end and split
   by the job's recorded transitions;
2. the same command through plain OpenSSH (a new connection each time) and
   through one warm asyncssh connection, as baselines;
3. throughput: many trivial jobs submitted back to back over one API
   connection, spread over the 4 hosts;
4. CLI start-up: `hpcbatch submit --wrap true` (the venv's entry point), against `python -c pass`.

Run: `.venv/bin/python benchmarks/dispatch.py [--jobs 200] [--throughput-jobs 1000]
[--json PATH]`. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hpcbatch.client import Client, ClientError
from hpcbatch.sandbox import Sandbox, missing_prerequisites, temporary_sandbox

SCRIPT = "#!/bin/sh\ntrue\n"
BASELINE_HOST = "node1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


# --------------------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    """n, median, p95, min, max and mean of `values` (seconds)."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": percentile(values, 95),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


# --------------------------------------------------------------------------- output


class Report:
    """Prints as it goes and keeps every number for --json."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    @staticmethod
    def line(text: str = "") -> None:
        print(text, flush=True)

    def header(self, title: str) -> None:
        self.line()
        self.line(title)
        self.line("-" * len(title))

    def timing_table(self, rows: list[tuple[str, dict[str, float]]]) -> None:
        width = max(len(name) for name, _ in rows)
        self.line(
            f"  {'':<{width}}  {'n':>5}  {'median ms':>10}  {'p95 ms':>10}"
            f"  {'min ms':>10}  {'max ms':>10}"
        )
        for name, s in rows:
            if not s.get("n"):
                self.line(f"  {name:<{width}}  {0:>5}  (no samples)")
                continue
            self.line(
                f"  {name:<{width}}  {s['n']:>5}  {ms(s['median']):>10}  {ms(s['p95']):>10}"
                f"  {ms(s['min']):>10}  {ms(s['max']):>10}"
            )


# --------------------------------------------------------------------------- machine


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (done.stdout.strip() or done.stderr.strip() or "?").splitlines()[0]


def machine_info() -> dict[str, Any]:
    from importlib.metadata import version

    from hpcbatch import __version__

    repo = Path(__file__).resolve().parent.parent
    commit = _output(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = _output(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"])
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "openssh": _output(["ssh", "-V"]),
        "asyncssh": version("asyncssh"),
        "hpcbatch": __version__,
        "git": commit + (" (+uncommitted changes)" if dirty not in ("", "?") else ""),
        "euid": os.geteuid(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


# --------------------------------------------------------------------------- controller


class ControllerProcess:
    """`hpcbatch controller` as a child process with its own short HOME under /tmp."""

    def __init__(self, sb: Sandbox, profile: Path | None = None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="hb-bench-", dir="/tmp"))
        self.socket = self.home / "controller.sock"
        if len(str(self.socket).encode()) >= 108:
            raise BenchError(f"socket path {self.socket} is too long for a Unix socket")
        self.log_path = self.home / "controller.log"
        prefix = [sys.executable]
        if profile is not None:
            prefix += ["-m", "cProfile", "-o", str(profile)]
        self.argv = [
            *prefix,
            "-m",
            "hpcbatch.cli.main",
            "--home",
            str(self.home),
            "controller",
            "--inventory",
            str(sb.inventory),
            "--log-level",
            "warning",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.n_hosts = len(sb.hosts)

    def start(self) -> None:
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the benchmark, which stops it
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            self._check_alive()
            if self.socket.exists():
                try:
                    with Client(self.socket, timeout=5) as client:
                        hosts = client.call("hosts")
                    if sum(h["state"] == "UP" for h in hosts) >= self.n_hosts:
                        return
                except ClientError:
                    pass
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the controller did not have {self.n_hosts} hosts UP within "
                    f"{START_TIMEOUT_S:.0f} s; its log says:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(
                f"the controller exited with status {self.proc.returncode}; its log says:\n"
                f"{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc})"
        return "\n".join(text.strip().splitlines()[-lines:]) or "(empty)"

    def client(self, timeout: float | None = 120.0) -> Client:
        self._check_alive()
        return Client(self.socket, timeout=timeout)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        """SIGTERM (clean stop: the profile, if any, is written), SIGKILL if it hangs."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"warning: controller pid {proc.pid} ignored SIGTERM; killing it")
                proc.kill()
                proc.wait(STOP_TIMEOUT_S)
        self.proc = None

    def cleanup(self, keep_log: bool) -> None:
        if keep_log:
            print(f"controller home kept at {self.home} (log: {self.log_path})")
        else:
            shutil.rmtree(self.home, ignore_errors=True)


@contextlib.contextmanager
def running_controller(sb: Sandbox, profile: Path | None) -> Iterator[ControllerProcess]:
    ctl = ControllerProcess(sb, profile)
    failed = False
    try:
        ctl.start()
        yield ctl
    except KeyboardInterrupt:
        raise
    except BaseException:
        failed = True  # keep the controller's log for a post-mortem
        raise
    finally:
        try:
            ctl.stop()
        finally:
            ctl.cleanup(keep_log=failed)


# --------------------------------------------------------------------------- 1. latency


def _transition_times(detail: dict[str, Any]) -> dict[str, float]:
    """First timestamp at which the job entered each state."""
    out: dict[str, float] = {}
    for t in detail["transitions"]:
        out.setdefault(str(t["new"]), float(t["ts"]))
    return out


def bench_latency(ctl: ControllerProcess, jobs: int, warmup: int, rep: Report) -> dict[str, Any]:
    e2e: list[float] = []
    marks: list[tuple[int, float, float]] = []  # job id, wall clock before submit / after wait
    with ctl.client(timeout=120) as client:
        for i in range(warmup + jobs):
            w0 = time.time()
            t0 = time.perf_counter()
            job_id = int(client.call("submit", request={"script": SCRIPT, "name": "lat"})["job_id"])
            (final,) = client.call("wait", job_ids=[job_id], timeout_s=60)
            t1 = time.perf_counter()
            w1 = time.time()
            if final["state"] != "SUCCEEDED":
                raise BenchError(f"latency job {job_id} ended {final['state']}: {final['reason']}")
            if i >= warmup:
                e2e.append(t1 - t0)
                marks.append((job_id, w0, w1))
        # Transitions are read after the timed loop so the reads do not disturb it.
        to_running: list[float] = []
        to_starting: list[float] = []
        starting_to_running: list[float] = []
        to_done: list[float] = []
        client_to_record: list[float] = []
        done_to_client: list[float] = []
        hosts: Counter[str] = Counter()
        for job_id, w0, w1 in marks:
            detail = client.call("show", job_id=job_id)
            ts = _transition_times(detail)
            first = min(ts.values())  # SUBMITTED (or RUNNABLE): written by the submit
            to_running.append(ts["RUNNING"] - first)
            to_starting.append(ts["STARTING"] - first)
            starting_to_running.append(ts["RUNNING"] - ts["STARTING"])
            to_done.append(ts["SUCCEEDED"] - ts["RUNNING"])
            client_to_record.append(first - w0)
            done_to_client.append(w1 - ts["SUCCEEDED"])
            hosts.update(detail.get("hosts") or [])
    rows = [
        ("end to end: submit call -> wait returns", summary(e2e)),
        ("  transitions: submitted -> RUNNING", summary(to_running)),
        ("    submitted -> STARTING (scheduler pass)", summary(to_starting)),
        ("    STARTING -> RUNNING (launch, job forked)", summary(starting_to_running)),
        ("  transitions: RUNNING -> SUCCEEDED", summary(to_done)),
        ("  client submit call -> submitted ts", summary(client_to_record)),
        ("  SUCCEEDED ts -> wait returns", summary(done_to_client)),
    ]
    rep.header(f"1. Dispatch latency: {jobs} sequential jobs `true` ({warmup} warm-up not counted)")
    rep.timing_table(rows)
    for text in (
        "  (transition timestamps: submitted and STARTING = controller clock when written;",
        "   RUNNING = the shepherd's clock just before it forks the job; SUCCEEDED = the",
        "   shepherd's clock when the job was reaped. Same machine, same clock.)",
    ):
        rep.line(text)
    rep.line(f"  hosts used: {dict(sorted(hosts.items()))}")
    return {
        "jobs": jobs,
        "warmup": warmup,
        "end_to_end": summary(e2e),
        "submitted_to_running": summary(to_running),
        "submitted_to_starting": summary(to_starting),
        "starting_to_running": summary(starting_to_running),
        "running_to_succeeded": summary(to_done),
        "client_submit_to_submitted_ts": summary(client_to_record),
        "succeeded_ts_to_wait_return": summary(done_to_client),
        "hosts": dict(hosts),
        "samples_s": {
            "end_to_end": e2e,
            "submitted_to_running": to_running,
            "submitted_to_starting": to_starting,
            "starting_to_running": starting_to_running,
            "running_to_succeeded": to_done,
        },
    }


# --------------------------------------------------------------------------- 2. baselines


def bench_openssh(sb: Sandbox, runs: int) -> list[float]:
    argv = sb.ssh_argv(BASELINE_HOST, "true")
    # -n: no stdin; BatchMode: never prompt. The ssh_config already pins the key exchange.
    argv = [argv[0], "-n", "-o", "BatchMode=yes", *argv[1:]]
    samples = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False
        )
        t1 = time.perf_counter()
        if done.returncode != 0:
            raise BenchError(
                f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.decode().strip()}"
            )
        if i > 0:  # the first run warms caches (sshd binary, keys), not counted
            samples.append(t1 - t0)
    return samples


async def _asyncssh_runs(sb: Sandbox, runs: int) -> tuple[float, list[float]]:
    __import__("hpcbatch.transport")  # first: it quiets asyncssh's DSA warning
    import asyncssh

    host = sb.host(BASELINE_HOST)
    t0 = time.perf_counter()
    conn = await asyncio.wait_for(
        asyncssh.connect(
            host.address,
            port=host.port,
            username=sb.user,
            client_keys=[str(sb.client_key)],
            known_hosts=str(sb.known_hosts),
        ),
        30,
    )
    connect_s = time.perf_counter() - t0
    samples = []
    async with conn:
        await asyncio.wait_for(conn.run("true", check=True), 30)  # warm-up
        for _ in range(runs):
            t0 = time.perf_counter()
            await asyncio.wait_for(conn.run("true", check=True), 30)
            samples.append(time.perf_counter() - t0)
    return connect_s, samples


def bench_baselines(
    sb: Sandbox, ssh_runs: int, asyncssh_runs: int, hpcbatch_median: float, rep: Report
) -> dict[str, Any]:
    ssh = bench_openssh(sb, ssh_runs)
    connect_s, warm = asyncio.run(_asyncssh_runs(sb, asyncssh_runs))
    s_ssh, s_warm = summary(ssh), summary(warm)
    rep.header(f"2. Baselines: `true` on {BASELINE_HOST} of the same sandbox")
    rep.timing_table(
        [
            ("OpenSSH `ssh -F ssh_config node1 true` (new conn.)", s_ssh),
            ("asyncssh conn.run('true') on one warm connection", s_warm),
        ]
    )
    rep.line(f"  (asyncssh connect, once: {ms(connect_s)} ms; one uncounted warm-up run each)")
    r_ssh = hpcbatch_median / s_ssh["median"]
    r_warm = hpcbatch_median / s_warm["median"]
    rep.line(
        f"  hpcbatch end-to-end median {ms(hpcbatch_median)} ms = {r_ssh:.2f}x OpenSSH,"
        f" {r_warm:.2f}x warm asyncssh"
    )
    return {
        "host": BASELINE_HOST,
        "openssh_new_connection": s_ssh,
        "asyncssh_warm_connection": s_warm,
        "asyncssh_connect_s": connect_s,
        "ratio_hpcbatch_to_openssh": r_ssh,
        "ratio_hpcbatch_to_asyncssh": r_warm,
        "samples_s": {"openssh": ssh, "asyncssh": warm},
    }


# --------------------------------------------------------------------------- 3. throughput


def machine_cpu_s() -> tuple[float, float]:
    """CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq)
    and in the kernel alone since boot, from /proc/stat: every process of the run,
    the short-lived shepherds and jobs and the kernel's work for them included."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, (system + irq + softirq) / tick


def bench_throughput(ctl: ControllerProcess, n: int, timeout: float, rep: Report) -> dict[str, Any]:
    submit_lat: list[float] = []
    ids: list[int] = []
    with ctl.client(timeout=timeout + 60) as client:
        w0 = time.time()
        cpu0 = machine_cpu_s()
        t0 = time.perf_counter()
        for _ in range(n):
            s0 = time.perf_counter()
            ids.append(
                int(client.call("submit", request={"script": SCRIPT, "name": "tp"})["job_id"])
            )
            submit_lat.append(time.perf_counter() - s0)
        t_submitted = time.perf_counter()
        finals = client.call("wait", job_ids=ids, timeout_s=timeout)
        t_done = time.perf_counter()
        cpu1 = machine_cpu_s()
    # wait's summaries carry the hosts (the `jobs` op's do not for finished jobs).
    summaries = finals
    states = Counter(str(f["state"]) for f in finals)
    hosts = Counter(h for s in summaries for h in s.get("hosts") or [])
    started = [float(s["started"]) for s in summaries if s.get("started")]
    ended = [float(s["ended"]) for s in summaries if s.get("ended")]
    total = t_done - t0
    submit_s = t_submitted - t0
    last_end_s = max(ended) - w0 if ended else None
    # Peak number of jobs running at once, from the recorded start/end times.
    edges = sorted(
        [(float(s["started"]), 1) for s in summaries if s.get("started") and s.get("ended")]
        + [(float(s["ended"]), -1) for s in summaries if s.get("started") and s.get("ended")],
    )
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    rep.header(f"3. Throughput: {n} jobs `true`, sequential submits on one connection, 4 hosts")
    rep.line(
        f"  first submit -> last completion (wait returns): {total:8.2f} s  "
        f"= {n / total:8.1f} jobs/s"
    )
    if last_end_s is not None:
        rep.line(
            f"  first submit -> last recorded end (agent ts):   {last_end_s:8.2f} s  "
            f"= {n / last_end_s:8.1f} jobs/s"
        )
    rep.line(
        f"  submission alone ({n} submits):                  {submit_s:8.2f} s  "
        f"= {n / submit_s:8.1f} jobs/s"
    )
    rep.timing_table([("submit call latency during the burst", summary(submit_lat))])
    if started:
        rep.line(
            f"  first start after first submit: {ms(min(started) - w0)} ms;"
            f" peak jobs running at once: {peak}"
        )
    busy, kernel = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    rep.line(
        f"  whole machine's CPU per job (/proc/stat, every process): {ms(busy / n)} ms,"
        f" of which kernel {ms(kernel / n)} ms"
    )
    rep.line(f"  final states: {dict(states)}; jobs per host: {dict(sorted(hosts.items()))}")
    if states.get("SUCCEEDED", 0) != n:
        rep.line("  WARNING: not every throughput job SUCCEEDED")
    return {
        "jobs": n,
        "total_s": total,
        "jobs_per_s": n / total,
        "machine_cpu_s_per_job": busy / n,
        "machine_kernel_s_per_job": kernel / n,
        "to_last_recorded_end_s": last_end_s,
        "submit_s": submit_s,
        "submit_jobs_per_s": n / submit_s,
        "submit_call": summary(submit_lat),
        "peak_running": peak,
        "states": dict(states),
        "hosts": dict(hosts),
    }


# --------------------------------------------------------------------------- 4. CLI


def _time_command(
    argv: list[str],
    runs: int,
    env: dict[str, str],
    check: Callable[[subprocess.CompletedProcess[bytes]], None] | None = None,
) -> list[float]:
    samples = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        done = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False
        )
        t1 = time.perf_counter()
        if done.returncode != 0:
            raise BenchError(
                f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.decode().strip()}"
            )
        if check is not None:
            check(done)
        if i > 0:  # the first run warms the page cache, not counted
            samples.append(t1 - t0)
    return samples


def bench_cli(ctl: ControllerProcess, runs: int, rep: Report) -> dict[str, Any]:
    bindir = Path(sys.executable).parent
    exe = bindir / "hpcbatch"
    if not exe.exists():
        found = shutil.which("hpcbatch")
        if found is None:
            raise BenchError(f"no hpcbatch script next to {sys.executable} or on PATH")
        exe = Path(found)
    env = dict(os.environ, HPCBATCH_SOCKET=str(ctl.socket))
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    job_ids: list[int] = []

    def collect(done: subprocess.CompletedProcess[bytes]) -> None:
        words = done.stdout.decode().split()
        if len(words) >= 3 and words[:2] == ["Submitted", "job"]:
            job_ids.append(int(words[2]))

    # With PYTHONDONTWRITEBYTECODE set (some containers do), every start compiles
    # hpcbatch's sources again; an installed hpcbatch has its .pyc files. Measure as
    # the environment is, and then with a bytecode cache outside the repository.
    modes = [("", "default", env)]
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        cached = dict(env, PYTHONPYCACHEPREFIX=str(ctl.home / "pycache"))
        cached.pop("PYTHONDONTWRITEBYTECODE")
        modes = [
            ("as run: no .pyc files (PYTHONDONTWRITEBYTECODE=1)", "no_pyc", env),
            ("with a .pyc cache (PYTHONPYCACHEPREFIX, as an installed hpcbatch)", "pyc", cached),
        ]
    commands = [
        ("hpcbatch submit --wrap true (whole process)", "hpcbatch_submit",
         [str(exe), "submit", "--wrap", "true"]),
        ("python -c 'import hpcbatch.cli.quick' (submit's path)", "import_cli",
         [sys.executable, "-c", "import hpcbatch.cli.quick"]),
        ("python -c pass (floor)", "python_pass", [sys.executable, "-c", "pass"]),
    ]  # fmt: skip
    rep.header(f"4. CLI start-up ({runs} runs each, one uncounted warm-up run)")
    out: dict[str, Any] = {"runs": runs}
    for label, mode, mode_env in modes:
        rows = []
        got: dict[str, dict[str, float]] = {}
        for name, key, argv in commands:
            check = collect if key == "hpcbatch_submit" else None
            samples = _time_command(argv, runs, mode_env, check)
            got[key] = summary(samples)
            rows.append((name, got[key]))
            out.setdefault("samples_s", {}).setdefault(mode, {})[key] = samples
        if label:
            rep.line(f"  {label}:")
        rep.timing_table(rows)
        sub, imp, floor = (
            got[k]["median"] for k in ("hpcbatch_submit", "import_cli", "python_pass")
        )
        rep.line(
            f"  submit over the floor: {ms(sub - floor)} ms (median); of which importing"
            f" hpcbatch.cli.quick: {ms(imp - floor)} ms (the launcher skips `site` as well)"
        )
        out[mode] = got
    if job_ids:  # let the CLI's jobs finish so the controller stops on a quiet cluster
        with ctl.client(timeout=90) as client, contextlib.suppress(ClientError):
            client.call("wait", job_ids=job_ids, timeout_s=60)
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=200, help="sequential latency jobs (200)")
    p.add_argument("--warmup", type=int, default=5, help="uncounted latency jobs first (5)")
    p.add_argument("--throughput-jobs", type=int, default=1000, help="throughput jobs (1000)")
    p.add_argument(
        "--throughput-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the throughput jobs (600)",
    )
    p.add_argument("--ssh-runs", type=int, default=50, help="OpenSSH baseline runs (50)")
    p.add_argument("--asyncssh-runs", type=int, default=200, help="asyncssh baseline runs (200)")
    p.add_argument("--cli-runs", type=int, default=20, help="CLI start-up runs (20)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also save the numbers as JSON")
    p.add_argument(
        "--profile-controller",
        type=Path,
        metavar="PATH",
        help="run the controller under cProfile, write its stats to PATH",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["latency", "baselines", "throughput", "cli"],
        help="leave a part out (repeatable)",
    )
    args = p.parse_args(argv)
    for name in ("jobs", "throughput_jobs", "ssh_runs", "asyncssh_runs", "cli_runs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if "latency" in args.skip and "baselines" not in args.skip:
        p.error("the baselines are reported as ratios to the latency: skip both or neither")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every finally


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    missing = missing_prerequisites()
    if missing:
        print("cannot run: the sandbox needs " + ", ".join(missing), file=sys.stderr)
        return 2
    rep = Report()
    info = machine_info()
    cmdline = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    rep.data.update(command=cmdline, machine=info, started=time.time())
    rep.line("hpcbatch dispatch benchmark")
    rep.line(f"command:  {cmdline}")
    rep.line(
        f"machine:  nproc {info['nproc']} (usable {info['cpus_usable']}), {info['cpu']},"
        f" {info['platform']}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    rep.line(
        f"software: Python {info['python']}, {info['openssh']}, asyncssh {info['asyncssh']},"
        f" hpcbatch {info['hpcbatch']} @ {info['git']}"
    )
    t_start = time.perf_counter()
    try:
        with temporary_sandbox(hosts=4) as sb:
            rep.line(
                f"sandbox:  {len(sb.hosts)} hosts "
                + ", ".join(f"{h.name}={h.address}:{h.port}" for h in sb.hosts)
                + f", login user {sb.user}"
            )
            with running_controller(sb, args.profile_controller) as ctl:
                with ctl.client(timeout=10) as client:
                    hosts = client.call("hosts")
                rep.line(
                    f"controller: pid {ctl.pid}, own process, home {ctl.home}; host CPUs: "
                    + ", ".join(f"{h['name']}={h['cpus']}" for h in hosts)
                )
                rep.data["hosts"] = {h["name"]: h["cpus"] for h in hosts}
                if "latency" not in args.skip:
                    rep.data["latency"] = bench_latency(ctl, args.jobs, args.warmup, rep)
                if "baselines" not in args.skip:
                    rep.data["baselines"] = bench_baselines(
                        sb,
                        args.ssh_runs,
                        args.asyncssh_runs,
                        rep.data["latency"]["end_to_end"]["median"],
                        rep,
                    )
                if "throughput" not in args.skip:
                    rep.data["throughput"] = bench_throughput(
                        ctl, args.throughput_jobs, args.throughput_timeout, rep
                    )
                if "cli" not in args.skip:
                    rep.data["cli"] = bench_cli(ctl, args.cli_runs, rep)
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"\nbenchmark failed: controller API: {exc.kind}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; sandbox and controller stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    rep.data["wall_s"] = time.perf_counter() - t_start
    rep.data["loadavg_at_end"] = list(os.getloadavg())
    rep.line()
    rep.line(
        f"total wall time {rep.data['wall_s']:.1f} s; load average now "
        + " ".join(f"{x:.2f}" for x in rep.data["loadavg_at_end"])
        + " (other work on this machine skews every number)"
    )
    if args.profile_controller:
        rep.line(f"controller profile: {args.profile_controller} (python -m pstats)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rep.data, indent=2, sort_keys=True) + "\n")
        rep.line(f"numbers saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
