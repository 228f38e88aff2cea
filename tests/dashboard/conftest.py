"""Dashboard fixtures: the integration tier's real controller on the sshd sandbox.

Pilot tests drive the app in the test's own event loop, next to a controller
running in that loop; the app reaches it only through its Unix socket.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.integration.conftest import Api, cluster, controller_factory, until

__all__ = ["Api", "cluster", "controller_factory", "until"]


@pytest.fixture(autouse=True)
def utc() -> None:
    """Timestamps in the views are local time: pin it so snapshots do not depend on TZ."""
    os.environ["TZ"] = "UTC"
    time.tzset()
