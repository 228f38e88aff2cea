"""The shepherd's wait for a job's killed process group (transport/agent/procs.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from hpcbatch.transport.agent.procs import wait_group_gone


def test_a_live_group_is_waited_for_then_reported_and_a_killed_one_is_gone() -> None:
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        started = time.monotonic()
        assert wait_group_gone(child.pid, 0.2) is False  # still running: waited the limit
        assert 0.2 <= time.monotonic() - started < 2.0
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        assert wait_group_gone(child.pid, 5.0) is True
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_group_that_never_existed_costs_nothing() -> None:
    child = subprocess.Popen(["true"], start_new_session=True)
    child.wait()
    started = time.monotonic()
    assert wait_group_gone(child.pid, 5.0) is True
    assert time.monotonic() - started < 0.5
