"""What running jobs as their submitter costs: run_as = "submitter" against "login".

One run brings up a 4-host sandbox with the real local user alice (as root:
`sandbox up --users`), and runs the same measurements against two controllers
in turn, each in its own process: one with the sandbox's inventory (agents log
in as the sandbox's login and run every job as it: `run_as = "login"`) and one
with its users inventory (agents log in as root and run each job as its
submitter). Jobs are submitted by alice, through the real socket, from a
process that has become alice, in both cases.

1. submit -> SUCCEEDED latency: sequential `true` jobs, median and p90;
2. end-to-end throughput: 500 `true` jobs submitted back to back, then waited for,
   and the whole machine's CPU per job meanwhile (/proc/stat: every process);
3. the agent alone (`--agent-jobs`, default 200 per run): launch -> exit of `true`
   at two real agents started side by side, one as the sandbox's login (jobs run
   as it) and one as root (each job as alice), launches alternating between them,
   with the cgroup limits the controller sends. This is the part of a launch that
   running as the submitter changes, without the controller, the SSH links and the
   submitting client, whose noise on a loaded machine is wider than the difference.

Both modes are measured `--runs` times (default 3) in one sandbox, with both
controllers up at once: the latency jobs alternate between them one by one
(a swing of the machine's load lands on both), the batches follow each other,
in an order that alternates between runs. Each run prints both figures per
mode and the ratios submitter/login;
the summary gives each ratio's median and spread over the runs (target:
submitter at most 1.3x slower), and the machine's load average, since on a
shared machine the spread can be wider than the difference being measured.

Against Slurm: the tuned Slurm profile's figures of the same workloads (b2, 500
`sbatch true` end to end, jobs/s; c4, sbatch -> COMPLETED, ms) from the
results of ../shared/baselines/slurm_baseline.sh: `--slurm PATH` (its
results.tsv; default /tmp/slurmbench/results/results.tsv when present),
`--slurm run` (runs it now, about 8 minutes) or `--slurm skip`.

Root only (it makes a user and lets the agents log in as root).

Run: `sudo .venv/bin/python benchmarks/run_as.py [--runs 3] [--latency-jobs 40] [--jobs 500]
[--agent-jobs 200] [--agent-only]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dispatch import BenchError, ControllerProcess, machine_cpu_s, machine_info
from limits import Agent
from vs_slurm import run_slurm, slurm_value

from hpcbatch.client import Client
from hpcbatch.sandbox import Sandbox, missing_prerequisites, temporary_sandbox
from hpcbatch.sandbox.model import SANDBOX_USER
from hpcbatch.sandbox.users import ensure_users
from hpcbatch.transport.agent_archive import archive

SCRIPT = "#!/bin/sh\ntrue\n"
USER = "alice"


def one_job(client: Client) -> float:
    """submit -> SUCCEEDED of one `true` job, in seconds."""
    t0 = time.perf_counter()
    job = int(client.call("submit", request={"script": SCRIPT, "name": "lat"})["job_id"])
    (end,) = client.call("wait", job_ids=[job], timeout_s=60)
    if end["state"] != "SUCCEEDED":
        raise BenchError(f"job {job} ended {end['state']}: {end.get('reason')}")
    return time.perf_counter() - t0


def measure(sockets: dict[str, str], latency_jobs: int, jobs: int) -> dict[str, Any]:
    """The measurements, as the client process runs them (already the user): the latency
    jobs interleaved between the modes' controllers (one job of each in turn, the first
    of each pair alternating), so that a swing of the machine's load lands on both; then
    each mode's batch, in the order given."""
    clients = {m: Client(Path(sock), timeout=600) for m, sock in sockets.items()}
    lat: dict[str, list[float]] = {m: [] for m in sockets}
    try:
        for i in range(latency_jobs + 5):
            for mode in list(sockets)[:: 1 if i % 2 else -1]:
                took = one_job(clients[mode])
                if i >= 5:  # warm-up: the first launches on each host
                    lat[mode].append(took)
        out: dict[str, Any] = {}
        for mode, client in clients.items():
            t0, cpu0 = time.perf_counter(), machine_cpu_s()[0]
            ids = [
                int(client.call("submit", request={"script": SCRIPT, "name": "tp"})["job_id"])
                for _ in range(jobs)
            ]
            ends = client.call("wait", job_ids=ids, timeout_s=600)
            took = time.perf_counter() - t0
            cpu = machine_cpu_s()[0] - cpu0  # every process: the controller, agents, jobs
            bad = [e for e in ends if e["state"] != "SUCCEEDED"]
            if bad:
                raise BenchError(f"{mode}: {len(bad)} of {jobs} jobs did not succeed: {bad[0]}")
            got = sorted(lat[mode])
            out[mode] = {"median": statistics.median(got), "p90": got[int(len(got) * 0.9)],
                         "throughput_s": took, "jobs": jobs, "cpu_s": cpu}  # fmt: skip
        return out
    finally:
        for client in clients.values():
            client.close()


def as_user(user: str, sockets: dict[str, str], latency_jobs: int, jobs: int) -> dict[str, Any]:
    """Run `measure` in a child that has become `user` (the controller sees its uid)."""
    pw = pwd.getpwnam(user)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.initgroups(pw.pw_name, pw.pw_gid)
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            out = json.dumps({"ok": measure(sockets, latency_jobs, jobs)})
        except BaseException as exc:
            out = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    result = json.loads(data or b'{"error": "the client died"}')
    if "error" in result:
        raise BenchError(result["error"])
    return dict(result["ok"])


def host_python() -> str:
    """The interpreter both modes' agents run on: the system's python3 (this process's
    where there is none)."""
    return shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or os.path.realpath(
        sys.executable
    )


def with_python(inventory: Path, python: str) -> Path:
    """A copy of `inventory` whose hosts run the agent on `python`. Without it each login
    finds its own `python3` on its PATH: root's may differ from the sandbox login's (a
    pyenv build in root's .bashrc ran the root agents 1.5x slower than Debian's python3
    here), which would be measured as the cost of running jobs as their submitter."""
    text = inventory.read_text()
    if "\n[defaults]\n" not in text:
        raise BenchError(f"{inventory}: no [defaults] table to set python in")
    out = inventory.with_name(f"{inventory.stem}-bench.toml")
    out.write_text(
        text.replace("\n[defaults]\n", f"\n[defaults]\npython = {json.dumps(python)}\n", 1)
    )
    return out


def run_modes(
    sb: Sandbox, inventories: dict[str, Path], latency_jobs: int, jobs: int
) -> dict[str, Any]:
    """Both modes' controllers up at once (their agents in separate work directories of
    the same hosts), measured by one client process; `inventories` in the batches' order."""
    ctls: dict[str, ControllerProcess] = {}
    try:
        for mode, inventory in inventories.items():
            ctl = ctls[mode] = ControllerProcess(sb)
            ctl.argv[ctl.argv.index(str(sb.inventory))] = str(inventory)
            ctl.start()
            os.chmod(ctl.home, 0o711)  # the socket's directory: alice connects
        return as_user(USER, {m: str(c.socket) for m, c in ctls.items()}, latency_jobs, jobs)
    finally:
        for ctl in ctls.values():
            try:
                ctl.stop()
            finally:
                ctl.cleanup(keep_log=False)


AGENT_LIMITS = {"memory_bytes": None, "cpus": 1}
"""What the controller's launch of a `true` job asks the agent to hold it to."""


def agents_base() -> Path:
    """A directory the agents' login passes through, with the agent's zipapp, and a
    root in it for each agent: the login's (its own) and root's."""
    base = Path(tempfile.mkdtemp(prefix="hb-runas-"))
    base.chmod(0o711)
    (base / "agent.pyz").write_bytes(archive())
    (base / "agent.pyz").chmod(0o644)
    for login in (SANDBOX_USER, "root"):
        (base / login).mkdir(mode=0o711)
        pw = pwd.getpwnam(login)
        os.chown(base / login, pw.pw_uid, pw.pw_gid)
    return base


async def start_agent(base: Path, login: str) -> Agent:
    """A real agent (the uploaded zipapp) as `login`, with its HOME, on its own root."""
    pw = pwd.getpwnam(login)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": pw.pw_dir, "USER": login,
           "LOGNAME": login}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(base / "agent.pyz"), "--root", str(base / login / "r"),
        "--heartbeat", "0", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        limit=1 << 24, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], env=env, cwd="/",
    )  # fmt: skip
    agent = Agent(proc)
    await agent.call("hello")
    return agent


async def agent_launches(jobs: int) -> dict[str, float]:
    """Median launch -> exit of `true` per mode, at two agents, alternating (10 warm-up
    launches each, not counted)."""
    base = agents_base()
    agents = {
        "login": await start_agent(base, SANDBOX_USER),
        "submitter": await start_agent(base, "root"),
    }
    took: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        for i in range(2 * (jobs + 10)):
            mode = MODES[i % 2]
            agent, attempt = agents[mode], f"{i}.1.0"
            user = {"user": USER} if mode == "submitter" else {}
            done = agent.expect(("exit", attempt))
            t0 = time.perf_counter()
            await agent.call(
                "launch", attempt=attempt, script=SCRIPT, limits=AGENT_LIMITS, cwd="/tmp",
                umask=0o022, **user,
            )  # fmt: skip
            end = await asyncio.wait_for(done, 60)
            if i >= 20:
                took[mode].append(time.perf_counter() - t0)
            if end["code"] != 0:
                raise BenchError(f"{mode}: `true` ended {end}")
            await agent.call("ack", attempts=[attempt])
    finally:
        for agent in agents.values():
            agent.proc.kill()
            await agent.proc.wait()
        shutil.rmtree(base, ignore_errors=True)
    return {m: statistics.median(took[m]) for m in MODES}


SLURM_RESULTS = Path("/tmp/slurmbench/results/results.tsv")
MODES = ("login", "submitter")


def spread(values: list[float]) -> str:
    """`median [min-max]` of a ratio over the runs."""
    return f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"


def print_run(n: int, jobs: int, results: dict[str, dict[str, Any]]) -> tuple[float, float]:
    """One run's table; its ratios (latency, end-to-end time) submitter / login."""
    print(f"run {n}: {'run_as':<10} {'submit->SUCCEEDED median':>25} {'p90':>9} "
          f"{'end to end (' + str(jobs) + ' jobs)':>26} {'CPU a job':>10}")  # fmt: skip
    for mode, r in results.items():
        rate = r["jobs"] / r["throughput_s"]
        print(f"       {mode:<10} {r['median'] * 1000:>22.1f} ms {r['p90'] * 1000:>6.1f} ms "
              f"{r['throughput_s']:>9.2f} s = {rate:>6.1f} jobs/s "
              f"{r['cpu_s'] / r['jobs'] * 1000:>7.2f} ms")  # fmt: skip
    lat = results["submitter"]["median"] / results["login"]["median"]
    tp = results["submitter"]["throughput_s"] / results["login"]["throughput_s"]
    print(f"       submitter / login: latency {lat:.2f}x, end-to-end time {tp:.2f}x", flush=True)
    return lat, tp


def print_slurm(mode: str, runs: list[dict[str, dict[str, Any]]]) -> None:
    """hpcbatch (run_as = "submitter") against tuned Slurm, where its figures exist."""
    if mode == "auto":
        mode = str(SLURM_RESULTS) if SLURM_RESULTS.is_file() else "skip"
    try:
        slurm, note = run_slurm(mode)
    except OSError as exc:
        print(f"Slurm: cannot read {mode}: {exc}")
        return
    b2, c4 = slurm_value(slurm, "tuned", "b2 "), slurm_value(slurm, "tuned", "c4 ")
    print(f"Slurm: {note}")
    if b2 is None and c4 is None:
        print("Slurm: no tuned b2/c4 figures there: no comparison")
        return
    sub = [r["submitter"] for r in runs]
    rate = statistics.median(r["jobs"] / r["throughput_s"] for r in sub)
    lat = statistics.median(r["median"] for r in sub) * 1000
    if b2:
        verdict = "ok" if rate >= 10 * b2 else "UNDER TARGET"
        print(f"end to end, run_as=submitter {rate:.1f} jobs/s vs Slurm tuned {b2:.1f} jobs/s: "
              f"{rate / b2:.1f}x (target >= 10x: {verdict})")  # fmt: skip
    if c4:
        print(f"submit->SUCCEEDED, run_as=submitter {lat:.1f} ms vs Slurm tuned {c4:.1f} ms: "
              f"{c4 / lat:.1f}x faster")  # fmt: skip


def agent_part(runs: int, jobs: int) -> None:
    """Part 3, the agent alone: each run's medians and ratio, then the ratio's spread."""
    ratios: list[float] = []
    loads = [os.getloadavg()[0]]
    for n in range(1, runs + 1):
        got = asyncio.run(agent_launches(jobs))
        ratios.append(got["submitter"] / got["login"])
        loads.append(os.getloadavg()[0])
        print(f"agent run {n}: launch -> exit of `true`, {jobs} per mode, alternating: login "
              f"{got['login'] * 1000:.1f} ms, submitter {got['submitter'] * 1000:.1f} ms: "
              f"{ratios[-1]:.2f}x", flush=True)  # fmt: skip
    print(f"agent alone, submitter / login over {runs} runs, median [min-max]: {spread(ratios)}"
          f"; load average (1 min) {' '.join(f'{x:.1f}' for x in loads)}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency-jobs", type=int, default=40)
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--agent-jobs", type=int, default=200, help="per mode and run (0: skip)")
    p.add_argument("--agent-only", action="store_true", help="part 3 alone (no sandbox)")
    p.add_argument("--slurm", default="auto", help="results.tsv, run, skip (default: auto)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("run_as.py needs root (it makes the user alice and agents log in as root)")
        return 2
    missing = missing_prerequisites()
    if missing:
        print("missing: " + ", ".join(missing), file=sys.stderr)
        return 2
    info = machine_info()
    print(f"machine: {info.get('cpu')} x{os.cpu_count()}, python {info.get('python')}")
    print(f"jobs submitted by {USER} through the socket; 4 sandbox hosts; {args.runs} runs")
    runs: list[dict[str, dict[str, Any]]] = []
    lats: list[float] = []
    tps: list[float] = []
    loads = [os.getloadavg()[0]]
    if args.agent_jobs > 0:
        ensure_users([USER])
        agent_part(args.runs, args.agent_jobs)
    if args.agent_only:
        return 0
    python = host_python()
    print(f"agents on {python} in both modes (the inventories' python)")
    with temporary_sandbox(hosts=4, gpu_hosts=0, users=(USER,)) as sb:
        inventories = {
            "login": with_python(sb.inventory, python),
            "submitter": with_python(sb.users_inventory, python),
        }
        for n in range(1, args.runs + 1):
            # Alternate which mode goes first, so that a drift in load favours neither.
            order = MODES if n % 2 else MODES[::-1]
            got = run_modes(sb, {m: inventories[m] for m in order}, args.latency_jobs, args.jobs)
            runs.append({m: got[m] for m in MODES})
            lat, tp = print_run(n, args.jobs, runs[-1])
            lats.append(lat)
            tps.append(tp)
            loads.append(os.getloadavg()[0])
    verdict = "ok" if max(statistics.median(lats), statistics.median(tps)) <= 1.3 else "OVER"
    print(f"submitter / login over {args.runs} runs, median [min-max]: latency {spread(lats)}, "
          f"end-to-end time {spread(tps)} (target <= 1.3x: {verdict})")  # fmt: skip
    print(f"load average (1 min) at start and after each run: "
          f"{' '.join(f'{x:.1f}' for x in loads)} on {os.cpu_count()} CPUs")  # fmt: skip
    for what, ratios in (("latency", lats), ("end-to-end time", tps)):
        if min(ratios) <= 1.3 < max(ratios):
            print(f"{what}: the runs fall on both sides of 1.3x: on this machine's load the "
                  "target cannot be decided")  # fmt: skip
        elif min(ratios) > 1.3:
            print(f"{what}: over 1.3x in every run")
    print_slurm(args.slurm, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
