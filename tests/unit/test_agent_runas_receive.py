"""The agent's wait for the user's process that prepares a job's files: cut at its deadline.

The agent runs on the hosts' Python (3.8 and later): there a socket's timeout is
`socket.timeout`, an OSError of its own before 3.10, so the deadline must be
caught by that name (issue 19's leftovers)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from hpcbatch.transport.agent import runas
from hpcbatch.transport.agent.protocol import BadRequest
from hpcbatch.transport.agent.userpaths import reap


def test_a_helper_that_never_answers_is_killed_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runas, "DEADLINE_S", 0.3)
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the user's process, hung on a dead mount: never answers
        ours.close()
        time.sleep(60)
        os._exit(0)
    theirs.close()
    t0 = time.monotonic()
    try:
        with pytest.raises(BadRequest, match=r"as alice took over 0\.3 s") as err:
            runas._receive(ours, pid, "alice", 2)
    finally:
        ours.close()
    assert err.value.code == "bad_path" and time.monotonic() - t0 < 5
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
        reap(pid)
    assert not os.path.exists(f"/proc/{pid}")  # killed and collected


def test_a_helper_that_fails_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        ours.close()
        theirs.sendall(b"bad_path:cannot enter /nowhere as alice")
        os._exit(0)
    theirs.close()
    try:
        with pytest.raises(BadRequest, match="cannot enter /nowhere as alice") as err:
            runas._receive(ours, pid, "alice", 2)
    finally:
        ours.close()
    assert err.value.code == "bad_path"
