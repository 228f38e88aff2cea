"""The agent's kept process per user (runas.UserHelpers), with real processes.

The helpers here are real forked processes speaking the helper's protocol
(the real helper switches users, which needs root: tests/integration/
test_agent_run_as.py runs it). A helper that misses the deadline (a hung
mount) is killed and that launch refused with `bad_path`; one that answers an
error has its words and code passed on; one that ended between launches (its
user may kill it) is replaced at the next; an idle one is let go.

The agent runs on the hosts' Python (3.8 and later): there a socket's timeout
is `socket.timeout`, an OSError of its own before 3.10, so the deadline must
be caught by that name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from hpcbatch.transport.agent import runas
from hpcbatch.transport.agent.fdpass import receive, send
from hpcbatch.transport.agent.procs import close_fds
from hpcbatch.transport.agent.protocol import BadRequest

ALICE = {"name": "alice", "uid": 1234, "gid": 1234, "groups": [1234]}
Entry = Callable[[socket.socket], None]


class Spawner:
    """Forks real helper processes (as the forker would) running `entry`."""

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self.pids: list[int] = []

    def __call__(self, name: str, args: Mapping[str, Any], fds: Sequence[int]) -> int:
        assert name == "user_helper" and args["user"] == ALICE
        pid = os.fork()
        if pid == 0:
            try:
                close_fds({fds[0]})  # as the forker's children: nothing of the agent's
                self.entry(socket.socket(fileno=fds[0]))
            finally:
                os._exit(0)
        self.pids.append(pid)
        return pid

    def reap(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):  # collected by the test already
                os.waitpid(pid, 0)


def answering(sock: socket.socket) -> None:
    """Answers each request with two descriptors (its own /dev/null), as the helper does."""
    while (got := receive(sock)) is not None:
        fd = os.open(os.devnull, os.O_WRONLY)
        send(sock, {"ok": True, "checked": {"cwd": got[0]["cwd"]}}, [fd, fd])
        os.close(fd)


def hung(sock: socket.socket) -> None:
    receive(sock)
    time.sleep(60)  # in a `stat` on a dead mount: never answers


def refusing(sock: socket.socket) -> None:
    while receive(sock) is not None:
        send(sock, {"ok": False, "code": "bad_path", "error": "cannot enter /nowhere"}, [])


def helpers(spawn: Spawner) -> runas.UserHelpers:
    return runas.UserHelpers(spawn, lambda delay, fn: None)


def prepare(h: runas.UserHelpers, cwd: str = "/tmp") -> tuple[dict[str, Any], list[int]]:
    return h.prepare(ALICE, "/nowhere/work", "true", {}, cwd, {"stdout": None}, os.O_WRONLY)


def test_one_helper_serves_a_users_launches() -> None:
    spawn = Spawner(answering)
    h = helpers(spawn)
    for cwd in ("/a", "/b", "/c"):
        checked, fds = prepare(h, cwd)
        assert checked == {"cwd": cwd} and len(fds) == 2
        for fd in fds:
            os.close(fd)
    assert len(spawn.pids) == 1  # forked once, not per launch
    h.close()
    spawn.reap()


def test_a_helper_that_never_answers_is_killed_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runas, "DEADLINE_S", 0.3)
    spawn = Spawner(hung)
    h = helpers(spawn)
    t0 = time.monotonic()
    with pytest.raises(BadRequest, match=r"as alice took over 0\.3 s") as err:
        prepare(h)
    assert err.value.code == "bad_path" and time.monotonic() - t0 < 5
    (pid,) = spawn.pids
    assert os.waitpid(pid, 0)[1] == signal.SIGKILL  # killed
    assert not h.kept  # and the next launch gets a new one


def test_a_helper_that_fails_says_why() -> None:
    spawn = Spawner(refusing)
    h = helpers(spawn)
    with pytest.raises(BadRequest, match="cannot enter /nowhere") as err:
        prepare(h)
    assert err.value.code == "bad_path"
    h.close()
    spawn.reap()


def test_a_helper_killed_between_launches_is_replaced() -> None:
    spawn = Spawner(answering)
    h = helpers(spawn)
    for fd in prepare(h)[1]:
        os.close(fd)
    os.kill(spawn.pids[0], signal.SIGKILL)  # its user may kill their own helper
    os.waitpid(spawn.pids[0], 0)
    checked, fds = prepare(h, "/after")
    assert checked == {"cwd": "/after"} and len(spawn.pids) == 2
    for fd in fds:
        os.close(fd)
    h.close()
    spawn.reap()


def test_an_idle_helper_is_let_go() -> None:
    spawn = Spawner(answering)
    h = helpers(spawn)
    for fd in prepare(h)[1]:
        os.close(fd)
    h.sweep()
    assert h.kept  # just used
    for helper in h.kept.values():  # its last launch, HELPER_IDLE_S ago
        helper.used -= runas.HELPER_IDLE_S + 1
    h.sweep()
    assert not h.kept
    assert os.waitpid(spawn.pids[0], 0)[1] == 0  # it ended by itself, at its socket's end
