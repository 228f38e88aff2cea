"""Shared pytest settings, the session-wide fixtures (the sandbox and PostgreSQL), and
the check that nothing a sandbox host started outlives the session.

Nothing here starts a process unless a test asks for `sandbox` (real sshd
hosts on loopback; see tests/integration/sandbox_fixture.py) or `postgres` /
`pg_url` (a real PostgreSQL server; tests/postgres_fixture.py, where
`store_engine` picks the store of a test's controllers). They live here so
that every test directory shares one of each per session.

At the end of the session every process a sandbox host started (found by the
mark sshd puts in its sessions' environment, `hpcbatch.sandbox.sandbox_processes`)
must be gone: one whose sandbox no longer runs would live on after `make test`
(a gang's holder did, once). Such leftovers fail the run, are listed, and are
then killed. Processes that were there before the session began are not counted.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from hpcbatch.sandbox import sandbox_processes, sandbox_status
from tests.integration.sandbox_fixture import sandbox
from tests.postgres_fixture import pg_url, postgres, store_engine

__all__ = ["pg_url", "postgres", "sandbox", "store_engine"]

_BEFORE = pytest.StashKey[set[int]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.stash[_BEFORE] = set(sandbox_processes())


def _running(root: Path) -> bool:
    status = sandbox_status(root)
    return status is not None and any(h.pid is not None for h in status.hosts)


def _describe(pid: int, root: Path) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        cmdline = "?"
    return f"pid {pid} ({cmdline.strip()}) of sandbox {root}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.stash.get(_BEFORE, set())
    left = {
        pid: root
        for pid, root in sandbox_processes().items()
        if pid not in before and not _running(root)
    }
    if not left:
        return
    lines = [_describe(pid, root) for pid, root in sorted(left.items())]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = "processes of stopped sandboxes outlived the session:\n  " + "\n  ".join(lines)
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(message, red=True)
    else:
        print(message)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
