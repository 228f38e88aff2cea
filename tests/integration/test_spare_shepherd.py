"""The spare cgroup's waiting shepherd (transport/agent/zygote.py), on real cgroups.

A launch with limits takes the spare the agent made ahead: its job process is
already in the group (the kernel's slow first migration paid before the launch),
and the waiting shepherd runs the launch as a shepherd forked for it would.
Skipped, saying why, where this machine gives no cgroup to write.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.transport.agent import cgroups
from hpcbatch.transport.agent.forker import Forker
from hpcbatch.transport.agent.hpcbatch_agent import FORKED
from hpcbatch.transport.agent.procs import QUICK, alive
from hpcbatch.transport.agent.zygote import KEEP, LOW, Spares
from tests.integration.test_agent_process import (
    TIMEOUT,
    WAIT_FOR_RELEASE,
    AgentFactory,
    eventually,
    start_agent,  # noqa: F401 (the fixture)
)


class Host:
    """What Spares uses of the agent: timers (run by hand here), its selector (pumped by
    `until`), and the ends its kept shepherds report."""

    def __init__(self) -> None:
        self.timers: list[Callable[[], None]] = []
        self.sel = selectors.DefaultSelector()
        self.ended: list[str] = []

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        self.timers.append(fn)

    def until(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not done():
            assert time.monotonic() < deadline, "nothing came"
            for key, _ in self.sel.select(0.1):
                key.data()


def _forker() -> Forker:
    forker = Forker(FORKED)  # the agent's own
    forker.start()
    return forker


def _gone(pid: int) -> None:
    """Wait for a process that is not our child (the forker's: the kernel reaps it)."""
    deadline = time.monotonic() + 10
    while alive(pid, None):
        assert time.monotonic() < deadline, f"process {pid} never ended"
        time.sleep(0.01)


def _spec(tmp: Path, cg: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "user": None, "cwd": str(tmp), "env": {"PATH": "/usr/bin:/bin"}, "timeout_s": 30.0,
        "grace_s": 1.0, "affinity": [], "warn_signal": None, "argv": ["/bin/sh", "-c",
        "grep -E ':memory:|^0::' /proc/self/cgroup | head -1"], "cgroup": cg,
    }  # fmt: skip


def _exit_of(adir: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while not (adir / "exit").exists():
        assert time.monotonic() < deadline, "no exit record"
        time.sleep(0.02)
    return dict(json.loads((adir / "exit").read_text()))


def test_a_launch_with_limits_runs_in_the_waiting_shepherd(tmp_path: Path) -> None:
    layout = cgroups.probe(str(tmp_path / "root"))
    if not layout.enforced:
        pytest.skip(f"no cgroup to write here: {layout.why}")
    host = Host()
    forker = _forker()
    spares = Spares(host, layout, forker, host.ended.append)  # type: ignore[arg-type]
    assert len(host.timers) == 1  # the spares are made once the agent's loop runs
    host.timers.pop()()
    assert len(spares.ready) == KEEP
    waiting = spares.ready[0].waiting
    assert waiting is not None
    cg = cgroups.create(layout, "z.1.0", {"memory_bytes": 64 << 20, "cpus": 1}, spares.take())
    assert cg is not None
    # The job process is in the attempt's group before the launch is even handed over.
    deadline = time.monotonic() + 10
    procs = Path(cg["dirs"]["memory" if layout.version == 1 else "unified"], "cgroup.procs")
    while not procs.read_text().split():
        assert time.monotonic() < deadline, "the waiting job process never joined"
        time.sleep(0.01)
    adir = tmp_path / "a"
    adir.mkdir()
    out = os.open(adir / "stdout", os.O_WRONLY | os.O_CREAT, 0o600)
    rec = spares.start(str(adir), _spec(tmp_path, cg), out, out)
    os.close(out)
    assert rec["shepherd"] == waiting.pid and rec["kept"]  # the made-ahead one ran it
    # The kept shepherd says when the attempt ended (its record written first), and
    # waits, alive, for the next spare's groups.
    host.until(lambda: host.ended == ["a"])
    result = _exit_of(adir)
    assert result["code"] == 0 and result["usage"]["source"] == "cgroup", result
    assert (adir / "stdout").read_text().strip().endswith("/z.1.0")
    assert not alive(rec["job"], None)  # the job ended
    assert spares.idle == [waiting] and alive(waiting.pid, None)
    # Spares are made again after an exit event (the agent calls fill), or a while
    # after a take, in a batch once only LOW are left, the kept shepherd first; a spare
    # let go ends without running anything.
    assert len(spares.ready) == KEEP - 1 and len(host.timers) == 1
    host.timers.pop()()
    assert len(spares.ready) == KEEP - 1  # not yet
    let_go = []
    while len(spares.ready) > LOW:
        let_go.append(spares.ready[0])
        spares.take()
    spares.drop(spares.taken)
    spares.fill()
    assert len(spares.ready) == KEEP and not spares.idle
    assert waiting in [spare.waiting for spare in spares.ready]  # no fork for that one
    # The kept shepherd runs its second launch as it ran the first.
    while spares.ready[0].waiting is not waiting:
        let_go.append(spares.ready[0])
        spares.take()
    cg2 = cgroups.create(layout, "z.2.0", {"memory_bytes": 64 << 20, "cpus": 1}, spares.take())
    adir2 = tmp_path / "b"
    adir2.mkdir()
    out = os.open(adir2 / "stdout", os.O_WRONLY | os.O_CREAT, 0o600)
    rec2 = spares.start(str(adir2), _spec(tmp_path, cg2), out, out)
    os.close(out)
    assert rec2["shepherd"] == waiting.pid and rec2["job"] != rec["job"]
    host.until(lambda: host.ended == ["a", "b"])
    assert _exit_of(adir2)["code"] == 0
    assert (adir2 / "stdout").read_text().strip().endswith("/z.2.0")
    spares.drop(waiting)  # let go while idle: it ends
    _gone(waiting.pid)
    cgroups.remove(cg)
    cgroups.remove(cg2)
    spares.fill()
    for spare in spares.ready:
        spares.drop(spare.waiting)
    for spare in let_go + spares.ready:  # each removed its groups before it ended
        assert spare.waiting is not None
        _gone(spare.waiting.pid)
        assert not any(os.path.exists(path) for path in spare.dirs.values())
    forker.close()


LIMITS = {"memory_bytes": 64 << 20, "cpus": 1}


def _groups(root: Path, spares: bool = False) -> set[str]:
    """The attempt groups (or the spares) under this agent's memory subtree."""
    layout = cgroups.probe(str(root))
    base = Path(layout.bases["memory" if layout.version == 1 else "unified"])
    return {
        p.name for p in base.iterdir() if p.is_dir() and p.name.startswith(cgroups.SPARE) == spares
    }


async def test_the_agent_removes_a_group_after_the_exit_event(
    start_agent: AgentFactory,  # noqa: F811 (the fixture, imported)
    tmp_path: Path,
) -> None:
    """Back-to-back launches with limits take spares; each shepherd reads the usage and
    leaves the group to its agent, which removes it once the exit is sent. A shepherd
    whose agent is gone removes its group itself."""
    layout = cgroups.probe(str(tmp_path / "root"))
    if not layout.enforced:
        pytest.skip(f"no cgroup to write here: {layout.why}")
    agent = await start_agent()
    await agent.ok("hello")
    for i in range(4):
        await agent.launch(f"g.{i}.n", "echo hi", limits=LIMITS)
        ev = await agent.exit_event(f"g.{i}.n")
        assert ev["code"] == 0 and ev["usage"]["source"] == "cgroup", ev
        assert ev["usage"]["mem_limit_bytes"] == LIMITS["memory_bytes"]
    await eventually(lambda: not _groups(tmp_path / "root"))

    release = tmp_path / "release"
    await agent.launch("g.9.n", WAIT_FOR_RELEASE, args=[str(release)], limits=LIMITS)
    assert _groups(tmp_path / "root") == {"g.9.n"}
    await agent.ok("shutdown")
    assert await asyncio.wait_for(agent.proc.wait(), TIMEOUT) == 0
    release.touch()
    await eventually((tmp_path / "root" / "attempts" / "g.9.n" / "exit").exists)
    await eventually(lambda: not _groups(tmp_path / "root"))
    await eventually(lambda: not _groups(tmp_path / "root", spares=True))  # they went too
    exit_record = json.loads((tmp_path / "root" / "attempts" / "g.9.n" / "exit").read_text())
    assert (exit_record["code"], exit_record["usage"]["source"]) == (7, "cgroup")


async def test_a_group_left_of_an_ended_attempt_is_removed_by_the_next_agent(
    start_agent: AgentFactory,  # noqa: F811 (the fixture, imported)
    tmp_path: Path,
) -> None:
    """An agent ended between its shepherd's exit (which left it the group) and the
    removal: the next agent removes the group when it scans the attempts."""
    root = tmp_path / "root"
    layout = cgroups.probe(str(root))
    if not layout.enforced:
        pytest.skip(f"no cgroup to write here: {layout.why}")
    agent = await start_agent()
    await agent.launch("g.8.n", "exit 3", limits=LIMITS)
    await agent.exit_event("g.8.n")
    await agent.stop()
    cg = json.loads((root / "attempts" / "g.8.n" / "meta.json").read_text())["cgroup"]
    for path in cg["dirs"].values():  # as that agent would have left it
        os.makedirs(path, exist_ok=True)
    assert _groups(root) == {"g.8.n"}
    second = await start_agent()
    [entry] = (await second.ok("hello"))["attempts"]
    assert (entry["attempt"], entry["exit"]["code"]) == ("g.8.n", 3)
    assert not _groups(root)


async def test_an_agent_that_finds_a_kept_shepherds_job_sees_it_end(
    start_agent: AgentFactory,  # noqa: F811 (the fixture, imported)
    tmp_path: Path,
) -> None:
    """A spare's shepherd is kept by its agent across jobs. A second agent on the same
    root while the first still runs (a standby controller took over; the old one is
    stopped, its agent is not) finds the job, and reports its end from the `exit`
    record, though the shepherd lives on, waiting for its own agent's next spare."""
    root = tmp_path / "root"
    layout = cgroups.probe(str(root))
    if not layout.enforced:
        pytest.skip(f"no cgroup to write here: {layout.why}")
    first = await start_agent()
    await first.ok("hello")
    release = tmp_path / "release"
    await first.launch("k.1.0", WAIT_FOR_RELEASE, args=[str(release)], limits=LIMITS)
    rec = json.loads((root / "attempts" / "k.1.0" / "pid").read_text())
    second = await start_agent()
    [entry] = (await second.ok("hello"))["attempts"]
    assert (entry["attempt"], entry["state"]) == ("k.1.0", "running")
    release.touch()
    ev = await second.exit_event("k.1.0")
    assert ev["code"] == 7 and ev["usage"]["source"] == "cgroup", ev
    assert (await first.exit_event("k.1.0"))["code"] == 7  # its own agent heard it too
    assert alive(rec["shepherd"], rec["shepherd_start"])  # kept, for the next spare


def _status(pid: int, field: str) -> int:
    """A hex mask of /proc/PID/status (SigIgn, SigBlk)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {field} for {pid}")


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])


def _memory_group(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if "memory" in ctrls.split(",") or not ctrls:  # v1's memory line comes before v2's
            return path
    raise AssertionError(f"no memory group for {pid}")


async def test_a_kept_shepherd_starts_the_job_from_its_group_and_leaves_it(
    start_agent: AgentFactory,  # noqa: F811 (the fixture, imported)
    tmp_path: Path,
) -> None:
    """As root on Python 3.11+, a kept shepherd waits in the spare's groups itself and
    starts the job there, set up in C (no job process forked ahead); once the start is
    reported it goes back to its own groups. The job is as start_job made it: its own
    process group, in the attempt's groups, with no signal blocked, nor ignored where
    the shepherd ignores it (an exec keeps what is ignored): SIGINT ends it."""
    root = tmp_path / "root"
    layout = cgroups.probe(str(root))
    if not layout.enforced:
        pytest.skip(f"no cgroup to write here: {layout.why}")
    if os.geteuid() != 0 or not QUICK:
        pytest.skip("the job started in C is a root agent's, on Python 3.11+")
    agent = await start_agent()
    await agent.ok("hello")
    shepherds = set()
    for n in range(1, 6):  # the spares' first shepherds, then kept ones (KEEP: 4)
        attempt = f"q.{n}.0"
        await agent.launch(attempt, "exec sleep 30", limits=LIMITS)
        rec = json.loads((root / "attempts" / attempt / "pid").read_text())
        job, shepherd = rec["job"], rec["shepherd"]
        shepherds.add(shepherd)
        await eventually(lambda: Path(f"/proc/{job}/comm").read_text().strip() == "sleep")  # noqa: B023
        assert _parent(job) == shepherd
        assert os.getpgid(job) == job
        assert _memory_group(job).endswith("/" + attempt)
        await eventually(lambda: not _memory_group(shepherd).endswith("/" + attempt))  # noqa: B023
        ignored = sum(1 << (s - 1) for s in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE))
        assert _status(job, "SigIgn") & ignored == 0 and _status(job, "SigBlk") == 0
        os.kill(job, signal.SIGINT)
        ev = await agent.exit_event(attempt)
        assert ev["signal"] == signal.SIGINT and ev["usage"]["source"] == "cgroup", ev
    assert len(shepherds) < 5  # a kept one ran a second launch
    # Waiting in their next spares, they hold no job process forked ahead.
    await eventually(lambda: all(not _children(p) for p in shepherds if alive(p, None)))
