"""The soak: many short jobs through real faults, then proof that nothing was lost.

A controller process runs over 4 sandbox hosts. While jobs are submitted and
run, at random moments (by progress, so they land while jobs run whatever the
machine's speed): the controller is SIGKILLed and restarted N times, one host
(node1, reached through a `FaultProxy`) is black-holed for a while, and another
(node3) has its sshd killed and restarted. At the end every job must be
SUCCEEDED or FAILED with its true reason (exit code 0, or 3 for every tenth),
each must have run exactly once (each appends its id to a ledger file named
after its host), and no process of this cluster may be left on any host.

`make test` runs a short version (tests/integration/test_soak.py); `make soak`
runs the full one: `python -m tests.integration.soak` (2,000 jobs, 3 controller
kills, a 20 s black hole), on its own temporary sandbox.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcbatch.client import Client, ClientError
from hpcbatch.sandbox import Sandbox, start_host, temporary_sandbox
from tests.integration.faults import FaultProxy, pid_alive, proxied_inventory, signal_sshd

BLACKHOLED = "node1"
SSHD_KILLED = "node3"


@dataclass
class SoakPlan:
    jobs: int = 200
    controller_kills: int = 1
    blackhole_s: float = 5.0
    sshd_down_s: float = 2.0
    job_sleep_s: float = 0.1
    seed: int = field(default_factory=lambda: random.randrange(1 << 30))
    timeout_s: float = 600.0


@dataclass
class SoakReport:
    plan: SoakPlan
    ids: list[int] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)
    wrong: list[dict[str, Any]] = field(default_factory=list)
    ran: Counter[int] = field(default_factory=Counter)
    leftovers: list[str] = field(default_factory=list)
    agents_seen: int = 0  # the leftover check's own check: it must see the live agents
    events: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    users: set[str] = field(default_factory=set)  # who the jobs ran as (`id -un`)

    @property
    def twice(self) -> list[int]:
        return [i for i, n in self.ran.items() if n > 1]

    @property
    def never(self) -> list[int]:
        return [i for i in self.ids if self.ran[i] == 0]

    def problems(self) -> list[str]:
        out = []
        if len(self.ids) != self.plan.jobs:
            out.append(f"{len(self.ids)} of {self.plan.jobs} jobs were accepted")
        if self.wrong:
            out.append(f"{len(self.wrong)} jobs with a wrong end, e.g. {self.wrong[:3]}")
        if self.twice:
            out.append(f"{len(self.twice)} jobs ran twice, e.g. {self.twice[:5]}")
        if self.never:
            out.append(f"{len(self.never)} jobs never ran, e.g. {self.never[:5]}")
        if self.leftovers:
            out.append(f"processes left on hosts: {self.leftovers[:5]}")
        if self.agents_seen < 4:
            out.append(f"the leftover check saw {self.agents_seen} agents while they ran, not 4")
        return out

    def summary(self) -> str:
        return (
            f"soak seed={self.plan.seed}: {len(self.ids)} jobs {dict(self.states)} in "
            f"{self.wall_s:.1f} s; ran {sum(self.ran.values())} times; "
            f"events: {'; '.join(self.events)}"
        )


USER_CLIENT = """
import json, os, pwd, sys
from hpcbatch.client import Client, ClientError
pw = pwd.getpwnam(sys.argv[1])
os.initgroups(pw.pw_name, pw.pw_gid); os.setgid(pw.pw_gid); os.setuid(pw.pw_uid)
for line in sys.stdin:
    try:
        with Client(sys.argv[2], timeout=60) as client:
            out = {"job_id": client.call("submit", request=json.loads(line))["job_id"]}
    except ClientError as exc:
        out = {"kind": exc.kind, "error": str(exc)}
    except OSError as exc:
        out = {"kind": "unavailable", "error": str(exc)}
    print(json.dumps(out), flush=True)
"""


class UserClient:
    """A process that has become `user` and submits what it is given through the socket:
    the controller sees the user's uid, as from `runuser -u USER -- hpcbatch submit`."""

    def __init__(self, user: str, socket: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", USER_CLIENT, user, str(socket)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def submit(self, request: dict[str, Any]) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        if "job_id" not in out:
            raise ClientError(out["kind"], out["error"])
        return int(out["job_id"])

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(10)
        self.proc.stdout.close()


class ControllerProcess:
    """The controller as a separate process, so that it can be SIGKILLed."""

    def __init__(self, inventory: Path, home: Path) -> None:
        self.inventory = inventory
        self.home = home
        self.proc: subprocess.Popen[bytes] | None = None
        self.submitters: list[UserClient] = []

    def start(self) -> None:
        with open(self.home / "controller.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hpcbatch.cli.main", "--home", str(self.home),
                 "controller", "--inventory", str(self.inventory), "--heartbeat", "1",
                 "--log-level", "info"],
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def call(self, op: str, timeout: float = 120.0, **args: Any) -> Any:
        """One API call, retried across controller restarts until `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with Client(self.home / "controller.sock", timeout=60) as client:
                    return client.call(op, **args)
            except (ClientError, OSError) as exc:
                if getattr(exc, "kind", None) not in (None, "unavailable", "connection"):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _script(ledger: Path, sleep_s: float, code: int) -> str:
    return (
        "#!/bin/sh\n"
        f'echo "$HPCBATCH_JOB_ID" >> {ledger}/"$SLURMD_NODENAME.$(id -un)"\n'
        f"sleep {sleep_s:g}\n"
        f"exit {code}\n"
    )


def run_soak(sb: Sandbox, plan: SoakPlan, say: Callable[[str], None] = print) -> SoakReport:
    report = SoakReport(plan)
    rng = random.Random(plan.seed)
    work = Path(tempfile.mkdtemp(prefix="hb-soak-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # read until the report is made
    ledger = work / "ledger"
    ledger.mkdir()
    for d in (work, ledger):
        d.chmod(0o777)  # jobs run as the sandbox login, which may not be us
    home = Path(tempfile.mkdtemp(prefix="hb-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    t0 = time.monotonic()
    host = sb.host(BLACKHOLED)
    with FaultProxy((host.address, host.port)) as proxy:
        # As root with the sandbox's users: jobs from alice and bob, each run as its
        # submitter (the users inventory); else all as the login, from us.
        base = sb.users_inventory if sb.users else None
        ctl = ControllerProcess(proxied_inventory(sb, {BLACKHOLED: proxy.port}, work, base), home)
        home.chmod(0o711)  # the socket's directory: the users connect
        ctl.submitters = [UserClient(u, ctl.home / "controller.sock") for u in sb.users]
        ctl.start()
        try:
            until(lambda: sum(h["state"] == "UP" for h in ctl.call("hosts")) == 4, 60, "4 UP")
            names = {f"soak-{i}": i for i in range(plan.jobs)}
            under_faults(
                lambda: _submit_all(ctl, plan, ledger, names, report),
                lambda done: _chaos(sb, ctl, proxy, plan, rng, report, done),
                lambda: _wait_final(ctl, report, plan),
            )
            finals = ctl.call("jobs", ids=report.ids)
            for job in finals:
                report.states[job["state"]] += 1
                expected = "FAILED" if names[job["name"]] % 10 == 0 else "SUCCEEDED"
                reason = "exit code 3" if expected == "FAILED" else "exit code 0"
                if (job["state"], job.get("reason")) != (expected, reason):
                    report.wrong.append(
                        {k: job.get(k) for k in ("id", "name", "state", "reason", "attempt")}
                    )
            until(lambda: sum(h["state"] == "UP" for h in ctl.call("hosts")) == 4, 120, "4 UP")
            report.agents_seen = len(_leftovers(sb, home, wait_s=0))
        finally:
            ctl.stop()
            for client in ctl.submitters:
                client.close()
        report.wall_s = time.monotonic() - t0
    for path in ledger.iterdir():
        report.ran.update(int(x) for x in path.read_text().split())
        report.users.add(path.name.rsplit(".", 1)[-1])
    report.leftovers = _leftovers(sb, home)
    say(report.summary())
    return report


def under_faults(
    submit: Callable[[], None],
    chaos: Callable[[threading.Event], None],
    wait_final: Callable[[], None],
) -> None:
    """The soaks' run: `submit` on one thread while `chaos` injects faults on another
    until every job is final (`wait_final`), then the faults stop (the event is set);
    the first exception of either thread is raised here."""
    done = threading.Event()
    failures: list[BaseException] = []
    submitter = threading.Thread(target=guard(failures, submit))
    faults = threading.Thread(target=guard(failures, lambda: chaos(done)))
    submitter.start()
    faults.start()
    submitter.join()
    try:
        wait_final()
    finally:
        done.set()
        faults.join()
    if failures:
        raise failures[0]


def guard(failures: list[BaseException], fn: Callable[[], None]) -> Callable[[], None]:
    """`fn` for a thread: what it raises is kept in `failures` for the main thread."""

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            failures.append(exc)

    return run


def until(pred: Callable[[], bool], timeout: float, what: str, soak: str = "soak") -> None:
    """Poll `pred` every 0.1 s; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{soak}: timed out waiting for {what}")
        time.sleep(0.1)


def _submit_all(
    ctl: ControllerProcess, plan: SoakPlan, ledger: Path, names: dict[str, int], report: SoakReport
) -> None:
    """Submit every job exactly once: after a failed call, look the name up first."""
    for name, i in names.items():
        request = {
            "name": name,
            "script": _script(ledger, plan.job_sleep_s, 3 if i % 10 == 0 else 0),
        }
        while True:
            try:
                if ctl.submitters:  # alice, bob, alice, ...: each through the socket as itself
                    job_id = ctl.submitters[i % len(ctl.submitters)].submit(request)
                else:
                    with Client(ctl.home / "controller.sock", timeout=60) as client:
                        job_id = int(client.call("submit", request=request)["job_id"])
                report.ids.append(job_id)
                break
            except (ClientError, OSError) as exc:
                if isinstance(exc, ClientError) and exc.kind != "unavailable":
                    raise
                # The controller died: was it accepted before it did?
                found = ctl.call("jobs", name=name, all=True)
                if found:
                    report.ids.append(int(found[0]["id"]))
                    break


def _final_count(ctl: ControllerProcess, report: SoakReport) -> int:
    ids = list(report.ids)
    if not ids:
        return 0
    jobs = ctl.call("jobs", ids=ids)
    return sum(j["state"] in ("SUCCEEDED", "FAILED") for j in jobs)


def _chaos(
    sb: Sandbox,
    ctl: ControllerProcess,
    proxy: FaultProxy,
    plan: SoakPlan,
    rng: random.Random,
    report: SoakReport,
    done: threading.Event,
) -> None:
    """Faults at random points of progress (fractions of jobs final)."""
    events: list[tuple[float, str]] = [
        (rng.uniform(0.02, 0.8), "kill") for _ in range(plan.controller_kills)
    ]
    events.append((rng.uniform(0.1, 0.6), "blackhole"))
    events.append((rng.uniform(0.1, 0.6), "sshd"))
    events.sort()
    timers: list[threading.Timer] = []

    def note(text: str) -> None:
        report.events.append(f"{time.strftime('%H:%M:%S')} {text}")

    for at, kind in events:
        while not done.is_set():
            with contextlib.suppress(ClientError, OSError):
                if _final_count(ctl, report) >= at * plan.jobs:
                    break
            time.sleep(0.2)
        if done.is_set():
            break
        if kind == "kill":
            ctl.kill()
            note(f"controller SIGKILLed at {at:.0%}")
            time.sleep(rng.uniform(0.2, 2.0))
            ctl.start()
        elif kind == "blackhole":
            proxy.blackhole()
            note(f"{BLACKHOLED} black-holed for {plan.blackhole_s:g} s at {at:.0%}")
            timers.append(threading.Timer(plan.blackhole_s, proxy.restore))
            timers[-1].start()
        else:
            signal_sshd(sb, SSHD_KILLED, signal.SIGKILL)
            note(f"{SSHD_KILLED} sshd killed for {plan.sshd_down_s:g} s at {at:.0%}")
            timers.append(threading.Timer(plan.sshd_down_s, start_host, (sb, SSHD_KILLED)))
            timers[-1].start()
    for t in timers:
        t.join()
    if proxy.mode != "pass":
        proxy.restore()


def _wait_final(ctl: ControllerProcess, report: SoakReport, plan: SoakPlan) -> None:
    deadline = time.monotonic() + plan.timeout_s
    while True:
        with contextlib.suppress(ClientError, OSError):
            if _final_count(ctl, report) == len(report.ids) == plan.jobs:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"soak: jobs not final after {plan.timeout_s:g} s")
        time.sleep(0.5)


def _leftovers(sb: Sandbox, home: Path, wait_s: float = 15.0) -> list[str]:
    with contextlib.closing(sqlite3.connect(home / "hpcbatch.db")) as db:
        (cluster,) = db.execute("SELECT value FROM meta WHERE key = 'cluster_id'").fetchone()
    return leftovers(cluster, wait_s)


def leftovers(cluster: str, wait_s: float = 15.0) -> list[str]:
    """This cluster's processes still on the hosts (agents exit when the controller
    goes; jobs are all over): none may remain. They are found by the cluster's
    directory on the hosts, in their command line or environment."""
    marker = f"/c-{cluster}".encode()
    found: list[str] = []
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid() or not pid_alive(int(entry)):
                continue
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                env = Path(f"/proc/{entry}/environ").read_bytes()
                if marker in env or marker in cmd:
                    found.append(f"{entry}: {cmd.decode(errors='replace')[:120]}")
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hpcbatch soak under real faults")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--blackhole", type=float, default=20.0)
    parser.add_argument("--sshd-down", type=float, default=5.0)
    parser.add_argument("--seed", type=int)
    opts = parser.parse_args(argv)
    plan = SoakPlan(jobs=opts.jobs, controller_kills=opts.kills, blackhole_s=opts.blackhole,
                    sshd_down_s=opts.sshd_down, timeout_s=1800)  # fmt: skip
    if opts.seed is not None:
        plan.seed = opts.seed
    users = ("alice", "bob") if os.geteuid() == 0 else ()  # jobs from two users, as root
    with temporary_sandbox(hosts=4, users=users) as sb:
        report = run_soak(sb, plan)
    problems = report.problems()
    for line in problems:
        print("PROBLEM:", line)
    print("soak: " + ("FAILED" if problems else "passed"))
    return 1 if problems else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
