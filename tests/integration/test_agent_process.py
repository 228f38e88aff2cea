"""The host agent as a real process: JSON lines on its stdin/stdout, real jobs.

Each test starts `hpcbatch_agent.py` locally (as the controller does over SSH)
with a fresh work directory and drives it with requests. Waits are on replies,
events or conditions with deadlines, never fixed sleeps. Tests that depend on
how the agent notices process ends run twice: with pidfds and with `--no-pidfd`
(the fallback for old kernels and Python 3.8).

Set HPCBATCH_TEST_AGENT_PYTHON to run the agent under another interpreter
(for instance python3.8, the oldest one it supports).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.transport.agent_archive import archive

AGENT_ARCHIVE = archive()  # the zipapp the controller uploads
HOME = os.path.expanduser("~")
REAL_HOME = os.path.realpath(HOME)
PYTHON = os.environ.get("HPCBATCH_TEST_AGENT_PYTHON", sys.executable)
TIMEOUT = 10.0
FACT_KEYS = {
    "hostname", "cpus", "memory_mb", "nvidia_smi", "nvidia_smi_error", "infiniband",
    "efa", "dev_infiniband", "runtimes", "runtime_versions", "runtimes_unusable", "python",
    "kernel", "user", "home", "cgroups",
}  # fmt: skip
EXIT_KEYS = {"ev", "attempt", "code", "signal", "reason", "timed_out", "killed", "started", "ended",
             "usage", "oom"}  # fmt: skip


class Agent:
    """One agent process and a client for its protocol."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.next_id = 0
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                msg = json.loads(line)
                if "id" in msg and msg["id"] in self.replies:
                    self.replies.pop(msg["id"]).set_result(msg)
                else:
                    self.events.append(msg)
                    self.changed.set()
        finally:  # the agent's output ended (or was unreadable): fail whoever waits on it
            for fut in self.replies.values():
                if not fut.done():
                    fut.set_exception(AssertionError("the agent's output ended"))

    async def send_line(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line)
        await self.proc.stdin.drain()

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a request and return its reply (ok or not)."""
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[self.next_id] = fut
        await self.send_line(json.dumps({"id": self.next_id, "op": op, **fields}).encode() + b"\n")
        return await asyncio.wait_for(fut, TIMEOUT)

    async def ok(self, op: str, **fields: Any) -> dict[str, Any]:
        reply = await self.call(op, **fields)
        assert reply["ok"], reply
        return reply

    async def event(
        self, pred: Callable[[dict[str, Any]], bool], within: float = TIMEOUT
    ) -> dict[str, Any]:
        """The first event (seen so far or to come) that matches `pred`."""

        async def find() -> dict[str, Any]:
            while True:
                self.changed.clear()
                for ev in self.events:
                    if pred(ev):
                        return ev
                await self.changed.wait()

        return await asyncio.wait_for(find(), within)

    async def exit_event(self, attempt: str, within: float = TIMEOUT) -> dict[str, Any]:
        ev = await self.event(lambda e: e.get("ev") == "exit" and e["attempt"] == attempt, within)
        assert set(ev) == EXIT_KEYS, ev
        return ev

    async def launch(self, attempt: str, script: str, **fields: Any) -> dict[str, Any]:
        reply = await self.ok("launch", attempt=attempt, script=script, **fields)
        assert isinstance(reply["pid"], int) and isinstance(reply["started"], float)
        return reply

    async def read_all(self, attempt: str, stream: str = "stdout") -> str:
        reply = await self.ok("read", attempt=attempt, stream=stream, offset=0)
        return str(reply["data"])

    async def stop(self) -> None:
        """SIGKILL the agent (its jobs are unaffected) and wait for it."""
        if self.proc.returncode is None:
            self.proc.kill()
        await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        await asyncio.wait_for(self.reader, TIMEOUT)


AgentFactory = Callable[..., Awaitable[Agent]]


@pytest.fixture
async def start_agent(tmp_path: Path) -> AsyncIterator[AgentFactory]:
    """Start agents on `tmp_path/root`; at the end kill them and every job they started."""
    agents: list[Agent] = []
    root = tmp_path / "root"

    async def start(*extra: str) -> Agent:
        agent_file = tmp_path / "agent.pyz"
        if not agent_file.exists():
            agent_file.write_bytes(AGENT_ARCHIVE)
        proc = await asyncio.create_subprocess_exec(
            PYTHON, str(agent_file), "--root", str(root), "--heartbeat", "0.2", *extra,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24,
        )  # fmt: skip
        agent = Agent(proc)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        await agent.stop()
        assert agent.proc.stdin is not None
        agent.proc.stdin.close()
    for pid_file in root.glob("attempts/*/pid"):
        job = json.loads(pid_file.read_text())["job"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job, signal.SIGKILL)


def gone(pid: int) -> bool:
    """The process no longer runs (absent, or a zombie no one has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def eventually(check: Callable[[], Any], within: float = TIMEOUT) -> Any:
    """Poll `check` until it returns something truthy (for things without an event)."""
    deadline = time.monotonic() + within
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
    return result


async def output_line(agent: Agent, attempt: str, count: int = 1) -> list[str]:
    """Wait until the attempt's stdout has `count` complete lines; return them."""
    while True:
        lines = (await agent.read_all(attempt)).splitlines(keepends=True)
        if len(lines) >= count and lines[count - 1].endswith("\n"):
            return [line.strip() for line in lines[:count]]
        await asyncio.sleep(0.02)


BOTH_MODES = pytest.mark.parametrize("mode", [(), ("--no-pidfd",)], ids=["pidfd", "polling"])
WAIT_FOR_RELEASE = 'echo started; while [ ! -e "$1" ]; do sleep 0.02; done; exit 7'


# --------------------------------------------------------------------------- hello


async def test_hello_facts_shape(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    reply = await agent.ok("hello")
    assert reply["agent_version"] == hashlib.sha256(AGENT_ARCHIVE).hexdigest()[:16]
    assert reply["pid"] == agent.proc.pid
    assert reply["attempts"] == []
    facts = reply["facts"]
    assert set(facts) == FACT_KEYS
    assert isinstance(facts["cpus"], int) and facts["cpus"] >= 1
    assert isinstance(facts["memory_mb"], int) and facts["memory_mb"] > 0
    assert isinstance(facts["hostname"], str) and facts["hostname"]
    assert isinstance(facts["infiniband"], list) and isinstance(facts["efa"], list)
    assert set(facts["efa"]) <= set(facts["infiniband"])
    assert isinstance(facts["dev_infiniband"], bool)
    assert all(isinstance(p, str) and os.path.isabs(p) for p in facts["runtimes"].values())
    assert set(facts["runtimes"]) <= {"podman", "docker", "apptainer", "singularity", "ch-run",
                                      "bwrap"}  # fmt: skip
    assert facts["nvidia_smi"] is None or isinstance(facts["nvidia_smi"], str)
    assert facts["home"] == HOME
    assert facts["python"].count(".") == 2


async def test_heartbeat_arrives(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    await agent.launch("hb.1.n", "sleep 100")
    beat = await agent.event(lambda e: e.get("ev") == "heartbeat" and e["running"] == 1)
    assert isinstance(beat["t"], float) and abs(beat["t"] - time.time()) < 5


# --------------------------------------------------------------------------- launch and exit


@BOTH_MODES
async def test_launch_echo_exits_zero(start_agent: AgentFactory, mode: tuple[str, ...]) -> None:
    agent = await start_agent(*mode)
    launched = await agent.launch("j1.1.n", "echo hello")
    ev = await agent.exit_event("j1.1.n")
    assert (ev["code"], ev["signal"], ev["reason"], ev["timed_out"]) == (0, None, None, False)
    assert ev["started"] == launched["started"] <= ev["ended"]
    read = await agent.ok("read", attempt="j1.1.n", stream="stdout", offset=0)
    assert (read["data"], read["offset"], read["done"]) == ("hello\n", 6, True)


async def test_exit_code_and_stderr(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    await agent.launch("j2.1.n", "echo oops >&2; exit 3")
    ev = await agent.exit_event("j2.1.n")
    assert (ev["code"], ev["signal"]) == (3, None)
    assert await agent.read_all("j2.1.n", "stderr") == "oops\n"


TRICKY = ["a b", "$(echo no)", "`echo no`", "line1\nline2", "'\"; exit 9", "", "*", "\\n"]


@pytest.mark.parametrize("shebang", [False, True])
async def test_args_and_env_reach_the_job_literally(
    start_agent: AgentFactory, shebang: bool
) -> None:
    agent = await start_agent()
    env = {f"V{i}": v for i, v in enumerate(TRICKY)}
    if shebang:
        script = (
            f"#!{sys.executable}\nimport json, os, sys\n"
            f"print(json.dumps([sys.argv[1:], {{k: os.environ[k] for k in {sorted(env)!r}}}]))\n"
        )
    else:
        script = (
            'printf "%s\\0" "$@"; echo; '
            + "; ".join(f'printf "%s\\0" "${k}"' for k in sorted(env))
        )  # fmt: skip
    await agent.launch("args.1.n", script, args=TRICKY, env=env)
    assert (await agent.exit_event("args.1.n"))["code"] == 0
    out = await agent.read_all("args.1.n")
    if shebang:
        assert json.loads(out) == [TRICKY, env]
    else:
        args, values = out.split("\0\n", 1)
        assert args.split("\0") == TRICKY
        assert values.split("\0")[:-1] == [env[k] for k in sorted(env)]


async def test_job_env_extends_the_agent_env(start_agent: AgentFactory, tmp_path: Path) -> None:
    agent = await start_agent()
    await agent.launch("env.1.n", 'echo "$PATH|$MINE"; pwd', env={"MINE": "x"})
    await agent.exit_event("env.1.n")
    # The agent's shims (hpcbatch-rsh, srun) come first on PATH, then the agent's own.
    shims = tmp_path / "root" / "bin"
    assert (await agent.read_all("env.1.n")).splitlines() == [
        f"{shims}:{os.environ['PATH']}|x",
        REAL_HOME,
    ]
    assert (shims / "srun").stat().st_mode & 0o111 and (shims / "hpcbatch-rsh").exists()


async def test_bad_interpreter_reports_exec_failure(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    await agent.launch("bad.1.n", "#!/nonexistent/interpreter\necho no\n")
    ev = await agent.exit_event("bad.1.n")
    assert ev["code"] == 127
    assert ev["reason"].startswith("exec failed:"), ev
    assert "cannot start the job" in await agent.read_all("bad.1.n", "stderr")


# --------------------------------------------------------------------------- launch refusals


async def test_launch_refusals(start_agent: AgentFactory, tmp_path: Path) -> None:
    agent = await start_agent()
    missing = tmp_path / "no" / "such" / "dir"
    reply = await agent.call("launch", attempt="r.1.n", script="true", cwd=str(missing))
    assert not reply["ok"] and str(missing) in reply["error"]
    reply = await agent.call("launch", attempt="r.1.n", script="true", stdout=str(missing / "o"))
    assert not reply["ok"] and str(missing) in reply["error"]
    for bad in ("..", ".", "a/b", "", "x y", 7):
        reply = await agent.call("launch", attempt=bad, script="true")
        assert not reply["ok"] and "attempt id" in reply["error"], reply
    reply = await agent.call("launch", attempt="r.1.n", script="true", args="not a list")
    assert not reply["ok"] and "args" in reply["error"]
    assert (await agent.ok("hello"))["attempts"] == []  # nothing was left behind

    await agent.launch("r.1.n", "true")
    reply = await agent.call("launch", attempt="r.1.n", script="true")
    assert not reply["ok"] and "already exists" in reply["error"]


async def test_output_paths(start_agent: AgentFactory, tmp_path: Path) -> None:
    agent = await start_agent()
    work = tmp_path / "work"
    work.mkdir()
    script = "echo out; echo err >&2; echo out2"
    await agent.launch(
        "o.1.n", script, cwd=str(work), stdout="both.log", stderr=str(work / "both.log")
    )
    await agent.exit_event("o.1.n")
    assert (work / "both.log").read_text() == "out\nerr\nout2\n"
    assert await agent.read_all("o.1.n", "stderr") == "out\nerr\nout2\n"

    await agent.launch("o.2.n", script, cwd=str(work), stdout="o.txt")
    await agent.exit_event("o.2.n")
    assert (work / "o.txt").read_text() == "out\nout2\n"
    assert await agent.read_all("o.2.n", "stderr") == "err\n"


# --------------------------------------------------------------------------- kill and timeout


async def test_kill_ends_the_whole_process_group(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    launched = await agent.launch("k.1.n", "sleep 100 & echo $!; wait")
    [bg] = await output_line(agent, "k.1.n")
    assert not gone(int(bg))
    reply = await agent.ok("kill", attempt="k.1.n", reason="cancelled by test", grace_s=5)
    assert reply["found"] is True
    ev = await agent.exit_event("k.1.n")
    assert (ev["code"], ev["signal"], ev["reason"]) == (None, signal.SIGTERM, "cancelled by test")
    await eventually(lambda: gone(launched["pid"]) and gone(int(bg)))
    assert (await agent.ok("kill", attempt="k.1.n", reason="again"))["found"] is False
    assert (await agent.ok("kill", attempt="nope.1.n"))["found"] is False


async def test_kill_escalates_to_sigkill(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    await agent.launch("k.2.n", "trap '' TERM; sleep 100 & echo $!; wait; wait")
    [bg] = await output_line(agent, "k.2.n")
    await agent.ok("kill", attempt="k.2.n", reason="stop", grace_s=0.3)
    ev = await agent.exit_event("k.2.n")
    assert (ev["signal"], ev["reason"]) == (signal.SIGKILL, "stop")
    await eventually(lambda: gone(int(bg)))


async def test_timeout(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    launched = await agent.launch(
        "t.1.n", "sleep 100 & echo $!; wait", timeout_s=0.5, kill_grace_s=0.5
    )
    ev = await agent.exit_event("t.1.n")
    assert ev["timed_out"] is True and "timed out" in ev["reason"]
    assert 0.4 < ev["ended"] - ev["started"] < 5
    [bg] = await output_line(agent, "t.1.n")
    await eventually(lambda: gone(launched["pid"]) and gone(int(bg)))


async def test_fence_kills_all_but_keep(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    keep = await agent.launch("f.1.n", "sleep 100")
    other = await agent.launch("f.2.n", "sleep 100")
    reply = await agent.ok("fence", keep=["f.1.n"])
    assert reply["killed"] == ["f.2.n"]
    ev = await agent.exit_event("f.2.n")
    assert ev["reason"] == "fenced"
    await eventually(lambda: gone(other["pid"]))
    assert not gone(keep["pid"])
    hello = await agent.ok("hello")
    states = {a["attempt"]: a["state"] for a in hello["attempts"]}
    assert states == {"f.1.n": "running", "f.2.n": "exited"}


# --------------------------------------------------------------------------- agent restarts


@BOTH_MODES
async def test_job_outlives_a_killed_agent(
    start_agent: AgentFactory, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    release = tmp_path / "release"
    first = await start_agent(*mode)
    launched = await first.launch("s.1.n", WAIT_FOR_RELEASE, args=[str(release)])
    await output_line(first, "s.1.n")
    await first.stop()
    assert not gone(launched["pid"])

    second = await start_agent(*mode)
    hello = await second.ok("hello")
    assert hello["attempts"] == [
        {"attempt": "s.1.n", "state": "running", "pid": launched["pid"], "exit": None}
    ]
    release.touch()
    ev = await second.exit_event("s.1.n")
    assert (ev["code"], ev["reason"]) == (7, None)


async def test_exit_while_no_agent_runs_then_ack(start_agent: AgentFactory, tmp_path: Path) -> None:
    release = tmp_path / "release"
    first = await start_agent()
    await first.launch("s.2.n", WAIT_FOR_RELEASE, args=[str(release)])
    await first.ok("shutdown")
    assert await asyncio.wait_for(first.proc.wait(), TIMEOUT) == 0
    release.touch()
    exit_file = tmp_path / "root" / "attempts" / "s.2.n" / "exit"
    await eventually(exit_file.exists)

    second = await start_agent()
    [entry] = (await second.ok("hello"))["attempts"]
    assert (entry["attempt"], entry["state"], entry["exit"]["code"]) == ("s.2.n", "exited", 7)
    assert (await second.ok("ack", attempts=["s.2.n"]))["acked"] == ["s.2.n"]
    assert (await second.ok("hello"))["attempts"] == []
    await second.stop()
    third = await start_agent()
    assert (await third.ok("hello"))["attempts"] == []


async def test_exited_attempt_is_listed_until_acked(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    await agent.launch("a.1.n", "exit 5")
    await agent.launch("a.2.n", "sleep 100")
    await agent.exit_event("a.1.n")
    listed = {a["attempt"]: a for a in (await agent.ok("hello"))["attempts"]}
    assert listed["a.1.n"]["state"] == "exited" and listed["a.1.n"]["exit"]["code"] == 5
    assert listed["a.2.n"]["state"] == "running"
    reply = await agent.ok("ack", attempts=["a.1.n", "a.2.n", "nope.1.n"])
    assert reply["acked"] == ["a.1.n"]  # a running attempt is not acknowledged
    assert [a["attempt"] for a in (await agent.ok("hello"))["attempts"]] == ["a.2.n"]


@BOTH_MODES
async def test_job_of_a_dead_shepherd_is_adopted(
    start_agent: AgentFactory, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    agent = await start_agent(*mode)
    launched = await agent.launch("l.1.n", "sleep 100")
    pid_file = tmp_path / "root" / "attempts" / "l.1.n" / "pid"
    shepherd = json.loads(pid_file.read_text())["shepherd"]
    os.kill(shepherd, signal.SIGKILL)
    await eventually(lambda: not Path(f"/proc/{shepherd}").exists())  # the agent reaped it
    [entry] = (await agent.ok("hello"))["attempts"]
    assert (entry["state"], entry["pid"]) == ("running", launched["pid"])
    assert not any(e.get("ev") == "exit" for e in agent.events)
    await agent.ok("kill", attempt="l.1.n", reason="cleanup", grace_s=5)  # the agent does it
    ev = await agent.exit_event("l.1.n")
    assert ev["code"] is None and ev["reason"].startswith("lost:") and "cleanup" in ev["reason"]
    await eventually(lambda: gone(launched["pid"]))
    [entry] = (await agent.ok("hello"))["attempts"]
    assert entry["state"] == "lost" and entry["exit"]["reason"].startswith("lost:")


# --------------------------------------------------------------------------- read, exec


async def test_read_with_offsets(start_agent: AgentFactory, tmp_path: Path) -> None:
    agent = await start_agent()
    release = tmp_path / "release"
    script = 'printf "abcdefghij"; printf "a\\303\\251"; while [ ! -e "$1" ]; do sleep 0.02; done'
    await agent.launch("rd.1.n", script, args=[str(release)])
    await eventually(lambda: (tmp_path / "root/attempts/rd.1.n/stdout").stat().st_size == 13)
    first = await agent.ok("read", attempt="rd.1.n", stream="stdout", offset=0, limit=4)
    assert (first["data"], first["offset"], first["done"]) == ("abcd", 4, False)
    split = await agent.ok("read", attempt="rd.1.n", stream="stdout", offset=10, limit=2)
    assert (split["data"], split["offset"]) == ("a", 11)  # never half a character
    rest = await agent.ok("read", attempt="rd.1.n", stream="stdout", offset=4)
    assert (rest["data"], rest["offset"], rest["done"]) == ("efghija\u00e9", 13, False)
    release.touch()
    await agent.exit_event("rd.1.n")
    end = await agent.ok("read", attempt="rd.1.n", stream="stdout", offset=13)
    assert (end["data"], end["offset"], end["done"]) == ("", 13, True)
    err = await agent.ok("read", attempt="rd.1.n", stream="stderr", offset=0)
    assert (err["data"], err["done"]) == ("", True)
    assert not (await agent.call("read", attempt="nope.1.n", stream="stdout", offset=0))["ok"]
    assert not (await agent.call("read", attempt="rd.1.n", stream="both", offset=0))["ok"]


async def test_exec(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    reply = await agent.ok(
        "exec", argv=["sh", "-c", 'echo "out $X"; echo err >&2; exit 4'], env={"X": "$(y)"}
    )
    assert (reply["code"], reply["stdout"], reply["stderr"]) == (4, "out $(y)\n", "err\n")
    assert reply["timed_out"] is False
    big = await agent.ok("exec", argv=["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x"])
    assert big["stdout"] == "x" * 64 * 1024
    missing = await agent.call("exec", argv=["/nonexistent/command"])
    assert not missing["ok"] and "/nonexistent/command" in missing["error"]


async def test_exec_does_not_block_and_times_out(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    slow = asyncio.create_task(agent.ok("exec", argv=["sleep", "100"], timeout_s=0.5))
    hello = await agent.ok("hello")  # answered while the exec runs
    assert not slow.done() and hello["ok"]
    reply = await slow
    assert reply["timed_out"] is True and reply["code"] is None
    assert reply["signal"] == signal.SIGKILL


# --------------------------------------------------------------------------- robustness, end


async def test_malformed_lines_do_not_kill_the_agent(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    await agent.send_line(b"this is not json\n")
    ev = await agent.event(lambda e: e.get("ev") == "error")
    assert "malformed" in ev["error"]
    await agent.send_line(b'{"op": "hello"}\n[1, 2]\n\xff\xfe\n')
    await agent.event(lambda e: e.get("ev") == "error" and "integer id" in e["error"])
    unknown = await agent.call("frobnicate")
    assert not unknown["ok"] and "frobnicate" in unknown["error"]
    wrong = await agent.call("kill", attempt="x.1.n", grace_s="soon")
    assert not wrong["ok"] and "grace_s" in wrong["error"]
    assert (await agent.ok("hello"))["pid"] == agent.proc.pid
    assert len([e for e in agent.events if e.get("ev") == "error"]) == 4


async def test_shutdown_and_eof_leave_jobs_running(start_agent: AgentFactory) -> None:
    agent = await start_agent()
    launched = await agent.launch("e.1.n", "sleep 100")
    await agent.ok("shutdown")
    assert await asyncio.wait_for(agent.proc.wait(), TIMEOUT) == 0
    await asyncio.wait_for(agent.reader, TIMEOUT)  # stdout reached EOF: no job holds it
    assert not gone(launched["pid"])

    again = await start_agent()
    assert (await again.ok("hello"))["attempts"][0]["state"] == "running"
    assert again.proc.stdin is not None
    again.proc.stdin.close()
    assert await asyncio.wait_for(again.proc.wait(), TIMEOUT) == 0
    await asyncio.wait_for(again.reader, TIMEOUT)
    assert not gone(launched["pid"])
