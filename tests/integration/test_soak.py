"""The short soak in `make test`: 200 jobs through a controller SIGKILL, a black-holed
host and a killed sshd; nothing lost, nothing run twice, nothing left behind.
The full one (2,000 jobs, 3 kills, a 20 s black hole) is `make soak`."""

from __future__ import annotations

import os

import pytest

from hpcbatch.sandbox import Sandbox
from tests.integration.soak import SoakPlan, run_soak

pytestmark = pytest.mark.sshd


@pytest.mark.timeout(300)
def test_short_soak(sandbox: Sandbox) -> None:
    plan = SoakPlan(jobs=200, controller_kills=1, blackhole_s=5.0, sshd_down_s=2.0)
    if os.environ.get("HPCBATCH_SOAK_SEED"):
        plan.seed = int(os.environ["HPCBATCH_SOAK_SEED"])
    report = run_soak(sandbox, plan)
    assert not report.problems(), report.summary() + "\n" + "\n".join(report.problems())
    assert report.states["FAILED"] == 20 and report.states["SUCCEEDED"] == 180
    if sandbox.users:  # as root: jobs from alice and bob, each run as its submitter
        assert report.users == set(sandbox.users), report.users
