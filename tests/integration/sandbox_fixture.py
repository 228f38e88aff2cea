"""The `sandbox` fixture: one 4-host sandbox (real sshd on loopback) per test session.

Import it from a conftest.py (`from sandbox_fixture import sandbox`, or
`from tests.integration.sandbox_fixture import sandbox` when tests are a
package). Tests that use it fail when sshd is missing (CI must never pass by
skipping them). The sandbox lives in a
fresh directory under /tmp and is brought down, sessions included, and removed
at the end of the session; set HPCBATCH_KEEP_SANDBOX=1 to keep its files (the
sshd logs) for a post-mortem.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from hpcbatch.sandbox import Sandbox, missing_prerequisites, temporary_sandbox


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """4 hosts node1..node4 on 127.0.0.2..5; node4 has 2 fake GPUs."""
    missing = missing_prerequisites()
    if missing:
        pytest.fail("the sandbox needs: " + ", ".join(missing) + " (make prereqs installs them)")
    # As root (CI), with real users alice and bob: multi-user tests run jobs as them
    # (sb.users_inventory); as anyone else they skip, saying so.
    users = ("alice", "bob") if os.geteuid() == 0 else ()
    keep = bool(os.environ.get("HPCBATCH_KEEP_SANDBOX"))
    with temporary_sandbox(hosts=4, keep=keep, users=users) as sb:
        yield sb
