"""The agent's forker (transport/agent/forker.py), with real processes.

The forker is a program of its own (not a fork of its caller). A child spawned
through it runs the named entry with the descriptors handed over, is not the
caller's child (the kernel reaps it), and starts with Python's usual signal
handling. A forker killed between requests is replaced at the
next; one that stops answering fails that request within its deadline and is
replaced; one whose caller lets go ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

import pytest

from hpcbatch.transport.agent.forker import Forker
from hpcbatch.transport.agent.procs import alive

ENTRIES = {
    "say": "tests.integration.forker_entries:say",
    "big": "tests.integration.forker_entries:size",
}
"""Imported by the forker, from the tree: a module with nothing but the standard library."""


def _read_line(fd: int) -> list[str]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        assert chunk, "the child wrote nothing"
        data += chunk
    return data.decode().split()


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid, None):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def forker() -> Any:
    f = Forker(ENTRIES)
    f.start()
    yield f
    f.close()


def test_a_spawned_child_runs_its_entry_with_the_descriptors_handed_over(forker: Forker) -> None:
    r, w = os.pipe()
    try:
        pid = forker.spawn("say", {"word": "hello"}, [w])
        os.close(w)
        word, child, parent, sigpipe_ignored, sigchld_default = _read_line(r)
    finally:
        os.close(r)
    assert (word, int(child), int(parent)) == ("hello", pid, forker.pid)
    # Python's SIGPIPE handling (ignored: errors instead), as if the caller had forked it;
    # SIGCHLD back to the default (the forker itself ignores it, to have its children reaped)
    assert sigpipe_ignored == "True" and sigchld_default == "True"
    assert _gone(pid)  # reaped by the kernel: no zombie left for anyone to collect
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # not ours


def test_the_forker_is_a_program_of_its_own_without_the_agents_modules(forker: Forker) -> None:
    r, w = os.pipe()
    try:
        forker.spawn("big", {}, [w])
        os.close(w)
        modules, agent = _read_line(r)
    finally:
        os.close(r)
    # what a fork of the agent would hold: its loop, relay, containers and the rest
    assert agent == "False", f"the forker's child holds the agent's modules ({modules} in all)"


def test_a_forker_whose_entries_cannot_be_imported_fails_to_start() -> None:
    f = Forker({"say": "tests.integration.no_such_module:say"})
    with pytest.raises(OSError, match=r"did not start: ModuleNotFoundError.*no_such_module"):
        f.start()
    assert f.pid is None and f.sock is None
    fd = os.open(os.devnull, os.O_WRONLY)
    try:  # each request tries again, and fails as a fork would
        with pytest.raises(OSError, match="did not start"):
            f.spawn("say", {"word": "x"}, [fd])
    finally:
        os.close(fd)


def test_an_unknown_entry_is_an_error_not_a_child(forker: Forker) -> None:
    with pytest.raises(OSError, match="no entry 'nope'"):
        forker.spawn("nope", {})
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        assert forker.spawn("say", {"word": "x"}, [fd]) > 0
    finally:
        os.close(fd)


def test_a_killed_forker_is_replaced_at_the_next_request(forker: Forker) -> None:
    first = forker.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert _gone(first)
    r, w = os.pipe()
    try:
        pid = forker.spawn("say", {"word": "again"}, [w])
        os.close(w)
        assert _read_line(r)[:2] == ["again", str(pid)]
    finally:
        os.close(r)
    assert forker.pid not in (None, first)


def test_a_stopped_forker_fails_the_request_in_time_and_is_replaced(forker: Forker) -> None:
    stopped = forker.pid
    assert stopped is not None and forker.sock is not None
    forker.sock.settimeout(0.5)  # ANSWER_S, shortened for the test
    os.kill(stopped, signal.SIGSTOP)
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        t0 = time.monotonic()
        with pytest.raises(OSError, match="did not answer"):
            forker.spawn("say", {"word": "late"}, [fd])
        assert time.monotonic() - t0 < 5
        assert _gone(stopped)  # killed, never resumed: the request it held never runs
    finally:
        os.close(fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(stopped, signal.SIGCONT)
    r, w = os.pipe()
    try:
        forker.spawn("say", {"word": "new"}, [w])
        os.close(w)
        assert _read_line(r)[0] == "new"
    finally:
        os.close(r)


def test_the_forker_ends_when_its_caller_lets_go() -> None:
    f = Forker(ENTRIES)
    f.start()
    pid, sock = f.pid, f.sock
    assert pid is not None and sock is not None
    sock.close()  # what the agent's end does to it (the agent exits, or is killed)
    assert f.proc is not None
    assert f.proc.wait(timeout=10) == 0  # it exits by itself
    f.proc = f.sock = None
