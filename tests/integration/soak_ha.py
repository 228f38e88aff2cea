"""The HA soak: many short jobs through the active controller's deaths and a pause.

Two controller processes share one real PostgreSQL store over 4 sandbox
hosts: one active, one `--standby`. While jobs are submitted and run, at
random points of progress, the active controller is SIGKILLed (its standby
takes over; the killed one comes back as the new standby) and, once,
SIGSTOPped: the standby takes over when the lease runs out, then the stopped
one is resumed and must exit (status 75) without writing or launching
anything; a new standby takes its place. Submissions go to whichever
controller answers, and a failed one is looked up by its name before it is
sent again, as a user would.

At the end, from the hosts, not only from the store: every job must be
final once with its true end (exit code 0, or 3 for every tenth), each must
have run exactly once (each appends its id to a ledger file) and have
exactly one attempt directory on the hosts (the agents' records), no attempt
may carry the paused leader's epoch made after its resume, and no process of
this cluster may be left on a host.

`make test` runs a short version (tests/integration/test_soak_ha.py: 150
jobs, one SIGKILL, one SIGSTOP); `make soak-ha` the full one: `python -m
tests.integration.soak_ha` (2,000 jobs, 3 SIGKILLs, 1 SIGSTOP), on its own
sandbox and PostgreSQL server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
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
from hpcbatch.sandbox import Sandbox, temporary_sandbox
from tests.integration.soak import leftovers, under_faults, until
from tests.postgres_server import TemporaryPostgres

LOST_LEAD = 75  # the exit status of a controller that lost the lead


@dataclass
class HaPlan:
    jobs: int = 150
    kills: int = 1
    stops: int = 1
    job_sleep_s: float = 0.1
    seed: int = field(default_factory=lambda: random.randrange(1 << 30))
    timeout_s: float = 600.0


@dataclass
class HaReport:
    plan: HaPlan
    ids: list[int] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)
    wrong: list[dict[str, Any]] = field(default_factory=list)
    ran: Counter[int] = field(default_factory=Counter)
    attempt_dirs: Counter[int] = field(default_factory=Counter)
    late_launches: list[str] = field(default_factory=list)  # the paused leader's, after resume
    resumed_exits: list[int | None] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    takeovers_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def problems(self) -> list[str]:
        out = []
        if len(self.ids) != self.plan.jobs or len(set(self.ids)) != self.plan.jobs:
            out.append(f"{len(set(self.ids))} of {self.plan.jobs} jobs were accepted once")
        if self.wrong:
            out.append(f"{len(self.wrong)} jobs with a wrong end, e.g. {self.wrong[:3]}")
        twice = [i for i, n in self.ran.items() if n > 1]
        never = [i for i in self.ids if self.ran[i] == 0]
        if twice:
            out.append(f"{len(twice)} jobs ran twice, e.g. {twice[:5]}")
        if never:
            out.append(f"{len(never)} jobs never ran, e.g. {never[:5]}")
        dirs = [i for i in self.ids if self.attempt_dirs[i] != 1]
        if dirs:
            out.append(f"{len(dirs)} jobs without exactly one attempt on the hosts: {dirs[:5]}")
        if self.late_launches:
            out.append(f"the resumed leader launched after its resume: {self.late_launches[:5]}")
        if any(code != LOST_LEAD for code in self.resumed_exits):
            out.append(f"a resumed leader did not exit {LOST_LEAD}: {self.resumed_exits}")
        if len(self.resumed_exits) != self.plan.stops:
            out.append(f"{len(self.resumed_exits)} of {self.plan.stops} pauses were made")
        if self.leftovers:
            out.append(f"processes left on hosts: {self.leftovers[:5]}")
        return out

    def summary(self) -> str:
        took = ", ".join(f"{t:.1f}" for t in self.takeovers_s)
        return (
            f"soak-ha seed={self.plan.seed}: {len(self.ids)} jobs {dict(self.states)} in "
            f"{self.wall_s:.1f} s; ran {sum(self.ran.values())} times; "
            f"{sum(self.attempt_dirs.values())} attempts on the hosts; take-overs (s): {took}; "
            f"events: {'; '.join(self.events)}"
        )


class Controllers:
    """The controller processes on one store: each with its own home and socket."""

    def __init__(self, inventory: Path, store: str, root: Path) -> None:
        self.inventory = inventory
        self.store = store
        self.root = root
        self.procs: dict[Path, subprocess.Popen[bytes]] = {}
        self.paused: set[Path] = set()  # SIGSTOPped: not asked (a ping would wait 2 s on it)
        self.n = 0

    def start(self, standby: bool) -> Path:
        self.n += 1
        home = self.root / f"c{self.n}"
        home.mkdir()
        argv = [
            sys.executable, "-m", "hpcbatch.cli.main", "--home", str(home), "controller",
            "--inventory", str(self.inventory), "--store", self.store, "--heartbeat", "1",
            "--log-level", "info",
        ]  # fmt: skip
        with open(home / "controller.log", "ab") as log:
            self.procs[home] = subprocess.Popen(
                [*argv, "--standby"] if standby else argv,
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        return home

    def active(self, timeout: float = 60.0) -> Path:
        """The home of the controller that answers as active."""
        deadline = time.monotonic() + timeout
        while True:
            for home, proc in list(self.procs.items()):
                if home not in self.paused and proc.poll() is None and _answers(home):
                    return home
            if time.monotonic() > deadline:
                raise TimeoutError("soak-ha: no active controller")
            time.sleep(0.1)

    def call(self, op: str, timeout: float = 120.0, **args: Any) -> Any:
        """One API call to the active controller, retried across take-overs."""
        deadline = time.monotonic() + timeout
        while True:
            home = self.active(timeout)
            try:
                with Client(home / "controller.sock", timeout=10) as client:
                    return client.call(op, **args)
            except (ClientError, OSError) as exc:
                if getattr(exc, "kind", None) not in (None, "unavailable", "connection"):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _answers(home: Path) -> bool:
    try:
        with Client(home / "controller.sock", timeout=2) as client:
            return bool(client.call("ping").get("role") == "active")
    except (ClientError, OSError):
        return False


def _script(ledger: Path, sleep_s: float, code: int) -> str:
    return (
        "#!/bin/sh\n"
        f'echo "$HPCBATCH_JOB_ID" >> {ledger}/"$SLURMD_NODENAME"\n'
        f"sleep {sleep_s:g}\n"
        f"exit {code}\n"
    )


def run_soak_ha(
    sb: Sandbox, pg: TemporaryPostgres, plan: HaPlan, say: Callable[[str], None] = print
) -> HaReport:
    report = HaReport(plan)
    rng = random.Random(plan.seed)
    work = Path(tempfile.mkdtemp(prefix="hb-soakha-"))
    ledger = work / "ledger"
    ledger.mkdir()
    for d in (work, ledger):
        d.chmod(0o777)  # jobs run as the sandbox login, which may not be us
    database = pg.create_database(f"soakha{os.getpid()}")
    ctls = Controllers(sb.inventory, pg.url(database), work)
    t0 = time.monotonic()
    try:
        ctls.start(standby=False)
        ctls.active()
        ctls.start(standby=True)
        until(lambda: ctls.call("status")["hosts"]["up"] == 4, 60, "4 hosts UP", "soak-ha")
        names = {f"ha-{i}": i for i in range(plan.jobs)}
        under_faults(
            lambda: _submit_all(ctls, plan, ledger, names, report),
            lambda done: _chaos(sb, pg, database, ctls, rng, report, done),
            lambda: _wait_final(ctls, report, plan),
        )
        for job in ctls.call("jobs", ids=report.ids):
            report.states[job["state"]] += 1
            expected = "FAILED" if names[job["name"]] % 10 == 0 else "SUCCEEDED"
            reason = "exit code 3" if expected == "FAILED" else "exit code 0"
            if (job["state"], job.get("reason")) != (expected, reason):
                report.wrong.append({k: job.get(k) for k in ("id", "name", "state", "reason")})
        cluster = _sql(pg, database, "SELECT value FROM meta WHERE key = 'cluster_id'")
    finally:
        ctls.stop_all()
        report.wall_s = time.monotonic() - t0
    for path in ledger.iterdir():
        report.ran.update(int(x) for x in path.read_text().split())
    for meta, _made in attempt_records(sb, cluster):
        report.attempt_dirs[int(str(meta["attempt"]).split(".")[0])] += 1  # JOB.ATTEMPT.NODE
    report.leftovers = leftovers(cluster)
    say(report.summary())
    shutil.rmtree(work, ignore_errors=True)
    pg.drop_database(database)
    return report


def attempt_records(sb: Sandbox, cluster: str) -> list[tuple[dict[str, Any], float]]:
    """Every attempt the hosts' agents made for this cluster: its launch request (the
    agent's meta.json, which keeps the request's epoch) and when its directory was made."""
    found = []
    for host in sb.hosts:
        for meta in host.work_dir.parent.glob(f"work*/c-{cluster}/*/attempts/*/meta.json"):
            found.append((json.loads(meta.read_text()), meta.parent.stat().st_mtime))
    return found


def _sql(pg: TemporaryPostgres, database: str, statement: str) -> str:
    return pg.sql(statement, database).strip()


def _submit_all(
    ctls: Controllers, plan: HaPlan, ledger: Path, names: dict[str, int], report: HaReport
) -> None:
    """Submit every job exactly once: after a failed call, look the name up first."""
    for name, i in names.items():
        request = {"name": name, "script": _script(ledger, plan.job_sleep_s, 0 if i % 10 else 3)}
        while True:
            try:
                home = ctls.active(plan.timeout_s)
                with Client(home / "controller.sock", timeout=10) as client:
                    report.ids.append(int(client.call("submit", request=request)["job_id"]))
                break
            except (ClientError, OSError) as exc:
                if isinstance(exc, ClientError) and exc.kind not in ("unavailable", "connection"):
                    raise
                found = ctls.call("jobs", name=name, all=True)  # accepted before it died?
                if found:
                    report.ids.append(int(found[0]["id"]))
                    break


def _final_count(ctls: Controllers, report: HaReport) -> int:
    ids = list(report.ids)
    if not ids:
        return 0
    jobs = ctls.call("jobs", ids=ids)
    return sum(j["state"] in ("SUCCEEDED", "FAILED") for j in jobs)


def _chaos(
    sb: Sandbox,
    pg: TemporaryPostgres,
    database: str,
    ctls: Controllers,
    rng: random.Random,
    report: HaReport,
    done: threading.Event,
) -> None:
    """SIGKILLs and SIGSTOPs of the active controller at random points of progress."""
    plan = report.plan
    events = [(rng.uniform(0.05, 0.8), "kill") for _ in range(plan.kills)]
    events += [(rng.uniform(0.1, 0.6), "stop") for _ in range(plan.stops)]
    events.sort()

    def note(text: str) -> None:
        report.events.append(f"{time.strftime('%H:%M:%S')} {text}")

    for at, kind in events:
        while not done.is_set():
            with contextlib.suppress(ClientError, OSError, TimeoutError):
                if _final_count(ctls, report) >= at * plan.jobs:
                    break
            time.sleep(0.2)
        if done.is_set():
            break
        home = ctls.active()
        proc = ctls.procs[home]
        if kind == "kill":
            proc.kill()
            proc.wait()
            t = time.monotonic()
            ctls.active()
            report.takeovers_s.append(time.monotonic() - t)
            note(f"active SIGKILLed at {at:.0%}, taken over in {report.takeovers_s[-1]:.1f} s")
        else:
            _pause(sb, pg, database, ctls, proc, report)
            note(f"active SIGSTOPped at {at:.0%}, taken over in {report.takeovers_s[-1]:.1f} s,"
                 f" resumed: exit {report.resumed_exits[-1]}")  # fmt: skip
        time.sleep(rng.uniform(0.2, 1.0))
        ctls.start(standby=True)


def _pause(
    sb: Sandbox,
    pg: TemporaryPostgres,
    database: str,
    ctls: Controllers,
    proc: subprocess.Popen[bytes],
    report: HaReport,
) -> None:
    """Stop the leader, let the standby take over and reach the hosts, resume the old
    one: it must exit without launching anything (checked on the hosts afterwards)."""
    old_epoch = int(_sql(pg, database, "SELECT value FROM meta WHERE key = 'epoch'"))
    home = next(h for h, p in ctls.procs.items() if p is proc)
    ctls.paused.add(home)
    os.kill(proc.pid, signal.SIGSTOP)
    t = time.monotonic()
    ctls.active()
    report.takeovers_s.append(time.monotonic() - t)
    until(
        lambda: ctls.call("status")["hosts"]["up"] == 4, 60, "the new leader's hosts UP", "soak-ha"
    )
    resumed = time.time()
    os.kill(proc.pid, signal.SIGCONT)
    try:
        report.resumed_exits.append(proc.wait(30))
    except subprocess.TimeoutExpired:
        report.resumed_exits.append(None)
        proc.kill()
        proc.wait()
    cluster = _sql(pg, database, "SELECT value FROM meta WHERE key = 'cluster_id'")
    for meta, made in attempt_records(sb, cluster):
        if meta.get("epoch") == old_epoch and made >= resumed:
            report.late_launches.append(str(meta["attempt"]))


def _wait_final(ctls: Controllers, report: HaReport, plan: HaPlan) -> None:
    deadline = time.monotonic() + plan.timeout_s
    while True:
        with contextlib.suppress(ClientError, OSError, TimeoutError):
            if _final_count(ctls, report) == len(report.ids) == plan.jobs:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"soak-ha: jobs not final after {plan.timeout_s:g} s")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hpcbatch HA soak: active/standby on PostgreSQL")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--stops", type=int, default=1)
    parser.add_argument("--seed", type=int)
    opts = parser.parse_args(argv)
    plan = HaPlan(jobs=opts.jobs, kills=opts.kills, stops=opts.stops, timeout_s=1800)
    if opts.seed is not None:
        plan.seed = opts.seed
    with temporary_sandbox(hosts=4) as sb, TemporaryPostgres() as pg:
        report = run_soak_ha(sb, pg, plan)
    problems = report.problems()
    for line in problems:
        print("PROBLEM:", line)
    print("soak-ha: " + ("FAILED" if problems else "passed"))
    return 1 if problems else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
