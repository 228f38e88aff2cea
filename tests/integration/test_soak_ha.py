"""The short HA soak in `make test`: 150 jobs on two controllers sharing a real
PostgreSQL store, through one SIGKILL and one SIGSTOP of the active one; every job
final once, none lost, none run twice (ledger and the hosts' attempt records), the
resumed leader exits without launching. The full one is `make soak-ha`."""

from __future__ import annotations

import os

import pytest

from hpcbatch.sandbox import Sandbox
from tests.integration.soak_ha import HaPlan, run_soak_ha
from tests.postgres_server import TemporaryPostgres

pytestmark = pytest.mark.sshd


@pytest.mark.timeout(300)
def test_short_ha_soak(sandbox: Sandbox, postgres: TemporaryPostgres) -> None:
    plan = HaPlan(jobs=150, kills=1, stops=1)
    if os.environ.get("HPCBATCH_SOAK_SEED"):
        plan.seed = int(os.environ["HPCBATCH_SOAK_SEED"])
    report = run_soak_ha(sandbox, postgres, plan)
    assert not report.problems(), report.summary() + "\n" + "\n".join(report.problems())
    assert report.states["FAILED"] == 15 and report.states["SUCCEEDED"] == 135
    assert len(report.takeovers_s) == 2 and max(report.takeovers_s) < 10.0, report.summary()
