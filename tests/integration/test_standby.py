"""Active/standby: two controller processes on one real PostgreSQL database.

The active controller holds the store's session lock; the standby
(`controller --standby`) waits for it. SIGKILL of the active one releases
the lock at once; SIGSTOP releases it after the lease (the server ends the
silent session). Either way the standby takes over within 10 s, collects the
running jobs from the agents, and they finish once. The stopped controller,
resumed, finds its session gone and the lock taken: it exits (status 75)
without writing to the store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from hpcbatch.client import Client, ClientError
from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import short_home

pytestmark = [pytest.mark.sshd, pytest.mark.timeout(240)]

TAKEOVER_S = 10.0


class Ctl:
    def __init__(self, sandbox: Sandbox, store: str, standby: bool) -> None:
        self.home = short_home()
        self.socket = self.home / "controller.sock"
        argv = [
            sys.executable, "-m", "hpcbatch.cli.main", "--home", str(self.home), "controller",
            "--inventory", str(sandbox.inventory), "--store", store, "--heartbeat", "1",
            "--log-level", "warning",
        ]  # fmt: skip
        if standby:
            argv.append("--standby")
        self.log = self.home / "controller.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    def ping(self) -> dict[str, Any] | None:
        try:
            with Client(self.socket, timeout=5) as c:
                info: dict[str, Any] = c.call("ping")
                return info
        except (ClientError, OSError):
            return None

    def call(self, op: str, **args: Any) -> Any:
        with Client(self.socket, timeout=120) as c:
            return c.call(op, **args)

    def until_up(self, timeout: float) -> float:
        t0 = time.monotonic()
        while self.ping() is None:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() - t0 < timeout, f"no controller after {timeout}s"
            time.sleep(0.1)
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def pair(sandbox: Sandbox, postgres: Any) -> Iterator[tuple[Ctl, Ctl, Any, str]]:
    name = postgres.create_database()
    url = postgres.url(name)
    active = Ctl(sandbox, url, standby=False)
    active.until_up(60)
    standby = Ctl(sandbox, url, standby=True)
    time.sleep(2)
    assert standby.proc.poll() is None and standby.ping() is None  # waiting, no API
    yield active, standby, postgres, name
    for c in (active, standby):
        if c.proc.poll() is None:
            os.kill(c.proc.pid, signal.SIGCONT)
        c.stop()
    postgres.drop_database(name)


def until_running(c: Ctl, job: int) -> None:
    deadline = time.monotonic() + 60
    while c.call("show", job_id=job)["state"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.2)


def finished_once(c: Ctl, job: int) -> None:
    c.call("wait", job_ids=[job], timeout_s=60)
    shown = c.call("show", job_id=job)
    assert shown["state"] == "SUCCEEDED" and len(shown["attempts"]) == 1, shown


def submit(c: Ctl, script: str) -> int:
    return int(c.call("submit", request={"script": script})["job_id"])


def test_sigkill_of_the_active_one_the_standby_takes_over_and_jobs_finish_once(
    pair: tuple[Ctl, Ctl, Any, str],
) -> None:
    active, standby, _, _ = pair
    assert active.ping()["role"] == "active"  # type: ignore[index]
    job = submit(active, "#!/bin/sh\necho start\nsleep 4\necho end\n")
    until_running(active, job)
    active.proc.kill()
    took = standby.until_up(TAKEOVER_S + 20)
    assert took < TAKEOVER_S, f"take-over took {took:.1f}s"
    finished_once(standby, job)
    assert standby.call("logs", job_id=job, stream="stdout")["data"] == "start\nend\n"
    later = submit(standby, "#!/bin/sh\necho after\n")
    finished_once(standby, later)


def test_sigstop_the_standby_takes_over_and_the_resumed_one_writes_nothing(
    pair: tuple[Ctl, Ctl, Any, str],
) -> None:
    active, standby, postgres, name = pair
    job = submit(active, "#!/bin/sh\nsleep 6\necho once\n")
    until_running(active, job)
    os.kill(active.proc.pid, signal.SIGSTOP)
    took = standby.until_up(TAKEOVER_S + 20)
    assert took < TAKEOVER_S, f"take-over took {took:.1f}s"
    second = submit(standby, "#!/bin/sh\necho two\n")
    for j in (job, second):
        finished_once(standby, j)
    before = postgres.sql("SELECT count(*), max(seq) FROM transitions", name)
    queued = submit(standby, "#!/bin/sh\nsleep 2\n")  # work the old one might try to start
    os.kill(active.proc.pid, signal.SIGCONT)
    assert active.proc.wait(timeout=20) == 75, active.log.read_text()[-2000:]
    assert "lost the lead" in active.log.read_text()
    finished_once(standby, queued)
    # Every transition since is the standby's own (the queued job's), none the old one's.
    rows = postgres.sql(f"SELECT count(*) FROM transitions WHERE job_id <> {queued}", name)
    assert rows.strip() == before.split("|")[0].strip(), (before, rows)
    assert standby.call("logs", job_id=job, stream="stdout")["data"] == "once\n"


def attempt_metas(sandbox: Sandbox, cluster: str) -> list[tuple[dict[str, Any], float]]:
    """Every attempt the hosts' agents made for this cluster: its launch request (the
    agent's meta.json, which keeps the request's epoch) and when it was written: once,
    at launch (the directory's own time moves whenever a file in it comes or goes)."""
    found = []
    for host in sandbox.hosts:
        for meta in host.work_dir.parent.glob(f"work*/c-{cluster}/*/attempts/*/meta.json"):
            found.append((json.loads(meta.read_text()), meta.stat().st_mtime))
    return found


def test_status_names_the_active_controller_its_standby_and_the_store(
    pair: tuple[Ctl, Ctl, Any, str],
) -> None:
    active, standby, _, name = pair
    deadline = time.monotonic() + 20
    while not (status := active.call("status"))["standbys"]:  # once it has started
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    lead = status["controller"]
    assert (lead["pid"], lead["epoch"]) == (active.proc.pid, active.ping()["epoch"])  # type: ignore[index]
    assert lead["epoch"] > 0 and lead["since"] <= time.time()
    assert [s["pid"] for s in status["standbys"]] == [standby.proc.pid]
    assert status["store"]["engine"] == "postgresql"
    assert status["store"]["where"].startswith("postgresql://") and name in status["store"]["where"]
    assert status["hosts"]["total"] == 4 and status["hosts"]["up"] + status["hosts"]["down"] == 4
    assert status["queue"]["depth"] == 0
    out = subprocess.run(
        [sys.executable, "-m", "hpcbatch.cli.main", "--socket", str(active.socket), "status"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert f"pid {active.proc.pid}" in out and f"epoch {lead['epoch']}" in out, out
    assert f"standby on {status['standbys'][0]['host']} pid {standby.proc.pid}" in out, out


def test_a_resumed_old_leader_launches_nothing_once_the_new_one_spoke_to_the_hosts(
    sandbox: Sandbox, pair: tuple[Ctl, Ctl, Any, str]
) -> None:
    """The agents' half of the fence, end to end: the old leader is stopped while it is
    launching a stream of jobs; after the take-over every agent has seen the new epoch,
    so whatever the old one still sends when resumed is refused (stale_epoch), and it
    exits. Checked on the hosts: no attempt launched with the old epoch after the resume,
    and every job ran exactly once."""
    active, standby, postgres, name = pair
    old_epoch = active.ping()["epoch"]  # type: ignore[index]
    jobs = [submit(active, f"#!/bin/sh\nsleep 1\necho {n}\n") for n in range(24)]
    until_running(active, jobs[0])
    os.kill(active.proc.pid, signal.SIGSTOP)
    took = standby.until_up(TAKEOVER_S + 20)
    assert took < TAKEOVER_S, f"take-over took {took:.1f}s"
    new_epoch = standby.ping()["epoch"]  # type: ignore[index]
    assert new_epoch > old_epoch
    deadline = time.monotonic() + 30
    while standby.call("status")["hosts"]["up"] < 4:  # every host has heard the new epoch
        assert time.monotonic() < deadline, standby.call("status")
        time.sleep(0.2)
    resumed = time.time()
    os.kill(active.proc.pid, signal.SIGCONT)
    assert active.proc.wait(timeout=20) == 75, active.log.read_text()[-2000:]
    assert "lost the lead" in active.log.read_text()
    for job in jobs:
        finished_once(standby, job)
    cluster = postgres.sql("SELECT value FROM meta WHERE key = 'cluster_id'", name).strip()
    metas = attempt_metas(sandbox, cluster)
    assert {m["epoch"] for m, _ in metas} <= {old_epoch, new_epoch}
    late = [(m["attempt"], made - resumed) for m, made in metas if m["epoch"] == old_epoch]
    assert all(after < 0 for _, after in late), late
    per_job = Counter(str(m["attempt"]).split(".")[0] for m, _ in metas)  # JOB.ATTEMPT.NODE
    assert sorted(per_job) == sorted(str(j) for j in jobs) and set(per_job.values()) == {1}
