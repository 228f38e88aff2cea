"""The host agent and user paths, error codes and the relay's door, as a real process.

A FIFO as a job's output fails that launch with a clear reason and code, and the
agent keeps answering (its heartbeats go on); an output replaced by a FIFO is
refused by `read`, saying what it is; the relay refuses an account that does
not own the attempt, even one holding the token, and a first line without end.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcbatch.transport.agent.relay import sock_address
from tests.integration.test_agent_process import Agent, AgentFactory, eventually
from tests.integration.test_agent_process import start_agent as start_agent  # the fixture

AS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to run a client as another uid (CI runs as root)"
)


async def heartbeat_after(agent: Agent, t: float) -> None:
    await agent.event(lambda e: e.get("ev") == "heartbeat" and e["t"] > t)


async def test_a_fifo_output_fails_the_launch_and_the_agent_stays_up(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = await start_agent()
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reply = await agent.call("launch", attempt="f.1.n", script="echo hi", stdout=str(fifo))
    assert not reply["ok"] and reply["code"] == "bad_path", reply
    assert reply["error"] == f"stdout path {fifo} is a FIFO, not a regular file"
    assert (await agent.ok("hello"))["attempts"] == []  # nothing left behind
    await heartbeat_after(agent, time.time())  # its loop was never held up
    # /dev/null is a character device: allowed.
    await agent.launch("f.2.n", "echo hi", stdout="/dev/null")
    assert (await agent.exit_event("f.2.n"))["code"] == 0


async def test_missing_directories_are_bad_paths_not_duplicates(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = await start_agent()
    missing = tmp_path / "exists"  # its name says "exists"; its code says what it is
    reply = await agent.call("launch", attempt="m.1.n", script="true", cwd=str(missing))
    assert not reply["ok"] and reply["code"] == "bad_path" and str(missing) in reply["error"]
    await agent.launch("m.2.n", "true")
    again = await agent.call("launch", attempt="m.2.n", script="true")
    assert not again["ok"] and again["code"] == "exists"
    gone = await agent.call("read", attempt="nope.1.n", stream="stdout", offset=0)
    assert not gone["ok"] and gone["code"] == "no_attempt"


async def test_read_of_an_output_turned_fifo_says_what_it_is(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = await start_agent()
    out = tmp_path / "o.txt"
    await agent.launch("r.1.n", "echo hi", cwd=str(tmp_path), stdout="o.txt")
    await agent.exit_event("r.1.n")
    assert await agent.read_all("r.1.n") == "hi\n"
    out.unlink()
    os.mkfifo(out)  # a writer-less FIFO: opening it for reading would block forever
    reply = await agent.call("read", attempt="r.1.n", stream="stdout", offset=0)
    assert not reply["ok"] and reply["code"] == "bad_path"
    assert "is a FIFO, not a regular file" in reply["error"]
    assert (await agent.ok("hello"))["pid"] > 0  # still answering


def relay_client(name: str, line: bytes, uid: int | None, wait_s: float = 10.0) -> str:
    """Connect to the relay (as `uid` when given), send `line`, return what comes back."""
    code = (
        "import os, socket, sys\n"
        "uid = int(sys.argv[3])\n"
        "if uid >= 0: os.setgid(uid); os.setuid(uid)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "s.connect(chr(0) + sys.argv[1][1:])\n"
        "s.settimeout(float(sys.argv[4]))\n"
        "try:\n"
        "    s.sendall(sys.stdin.buffer.read())\n"
        "except OSError:\n"  # cut off by the agent: read what it said
        "    pass\n"
        "out = b''\n"
        "try:\n"
        "    while (chunk := s.recv(65536)): out += chunk\n"
        "except OSError:\n"
        "    pass\n"
        "sys.stdout.write(out.decode())\n"
    )
    assert sock_address(name).startswith("\0")  # abstract: the child adds the NUL
    argv = [sys.executable, "-c", code, name, "-", str(-1 if uid is None else uid), str(wait_s)]
    done = subprocess.run(argv, input=line, capture_output=True, timeout=20, check=True)
    return done.stdout.decode()


@AS_ROOT
async def test_the_relay_refuses_a_foreign_uid(start_agent: AgentFactory, tmp_path: Path) -> None:
    agent = await start_agent()
    release = tmp_path / "release"
    await agent.launch("x.1.n", 'while [ ! -e "$1" ]; do sleep 0.05; done', args=[str(release)])
    env_file = tmp_path / "root" / "attempts" / "x.1.n" / "env.json"
    env = await eventually(lambda: env_file.exists() and json.loads(env_file.read_text()))
    token, name = env["HPCBATCH_RELAY_TOKEN"], env["HPCBATCH_RELAY"]
    opening = json.dumps({"token": token, "attempt": "x.1.n", "host": "h", "command": "true"})
    nobody = pwd.getpwnam("nobody").pw_uid
    # Another account holding the right token (it read it somewhere): refused.
    foreign = await asyncio.to_thread(relay_client, name, opening.encode() + b"\n", nobody)
    assert f"uid {nobody} does not own 'x.1.n'" in foreign
    # A wrong token, from the owner: refused as before.
    wrong = json.dumps({"token": "0" * 32, "attempt": "x.1.n", "host": "h", "command": "true"})
    assert "not inside a running job" in await asyncio.to_thread(
        relay_client, name, wrong.encode() + b"\n", None
    )
    # An endless first line: cut off, not buffered.
    flood = await asyncio.to_thread(relay_client, name, b"x" * (1 << 20), None)
    assert "first line too long" in flood
    assert (await agent.ok("hello"))["pid"] > 0
    release.touch()
    await agent.exit_event("x.1.n")
