"""The `sandbox` fixture: one 4-host sandbox (real sshd on loopback) per test session.

Import it from a conftest.py (`from sandbox_fixture import sandbox`, or
`from tests.integration.sandbox_fixture import sandbox` when tests are a
package). Tests that use it skip when sshd is missing. The sandbox lives in a
fresh directory under /tmp (mode 0755: as root its login user must reach it)
and is brought down, sessions included, and removed at the end of the session;
set HPCBATCH_KEEP_SANDBOX=1 to keep its files (sshd logs) for a post-mortem.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.sandbox import Sandbox, missing_prerequisites, sandbox_down, sandbox_up


@contextlib.contextmanager
def running_sandbox(**kwargs: Any) -> Iterator[Sandbox]:
    """A sandbox in a fresh /tmp directory, brought down and removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="hpcbatch-sbx-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield sandbox_up(root, **kwargs)
    finally:
        sandbox_down(root)
        if not os.environ.get("HPCBATCH_KEEP_SANDBOX"):
            shutil.rmtree(root, ignore_errors=True)


def skip_without_sshd() -> None:
    missing = missing_prerequisites()
    if missing:
        pytest.skip("the sandbox needs: " + ", ".join(missing))


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """4 hosts node1..node4 on 127.0.0.2..5; node4 has 2 fake GPUs."""
    skip_without_sshd()
    with running_sandbox(hosts=4) as sb:
        yield sb
