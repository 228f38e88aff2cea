"""Shared pytest settings and the one session-wide sandbox fixture.

Nothing here starts a process unless a test asks for `sandbox` (real sshd
hosts on loopback; see tests/integration/sandbox_fixture.py). It lives here so
that tests/integration and tests/dashboard share one sandbox per session.
"""

from tests.integration.sandbox_fixture import sandbox

__all__ = ["sandbox"]
