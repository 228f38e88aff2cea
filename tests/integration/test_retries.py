"""Retries and timeouts on the real sandbox: exit rules, attempt history, --signal."""

from __future__ import annotations

from typing import Any

import pytest

from hpcbatch.sandbox import Sandbox

pytestmark = pytest.mark.sshd

RULES = {
    "attempts": 3,
    "evaluate_on_exit": [
        {"on_exit_code": "42", "action": "RETRY"},
        {"on_exit_code": "*", "action": "EXIT"},
    ],
}
# Exits 42 on its first two attempts, then 0; prints what it sees of its attempt.
FLAKY = (
    "#!/bin/sh\n"
    'echo "attempt $HPCBATCH_ATTEMPT aws $AWS_BATCH_JOB_ATTEMPT restarts $SLURM_RESTART_COUNT"\n'
    'if [ "$HPCBATCH_ATTEMPT" -lt 3 ]; then exit 42; fi\n'
)


async def test_exit_42_is_retried_exit_1_is_not(sandbox: Sandbox, controller_factory: Any) -> None:
    _c, api = await controller_factory()
    flaky = await api.submit(script=FLAKY, retry=RULES)
    broken = await api.submit(script="#!/bin/sh\necho once\nexit 1\n", retry=RULES)
    done = {j["id"]: j for j in await api.wait(flaky, broken, timeout=60)}
    assert done[flaky]["state"] == "SUCCEEDED", done[flaky]
    assert done[broken]["state"] == "FAILED" and done[broken]["reason"] == "exit code 1"

    shown = await api("show", job_id=flaky)
    attempts = shown["attempts"]
    assert [(a["attempt"], a["exit_code"], a["state"]) for a in attempts] == [
        (1, 42, "EXITED"),
        (2, 42, "EXITED"),
        (3, 0, "EXITED"),
    ]
    assert all(a["host"] in {h.name for h in sandbox.hosts} for a in attempts)
    assert all(a["started"] and a["ended"] and a["ended"] >= a["started"] for a in attempts)
    retries = [
        t for t in shown["transitions"] if t["new"] == "RUNNABLE" and t["old"] != "SUBMITTED"
    ]
    assert len(retries) == 2 and "exit code 42" in retries[0]["reason"]
    # Every attempt's output is kept, and each saw its own number.
    for n in (1, 2, 3):
        out = await api("logs", job_id=flaky, attempt=n)
        assert out["data"] == f"attempt {n} aws {n} restarts {n - 1}\n"

    once = await api("show", job_id=broken)
    assert [a["attempt"] for a in once["attempts"]] == [1]


async def test_timeout_is_not_retried_unless_a_rule_says(
    sandbox: Sandbox, controller_factory: Any
) -> None:
    _c, api = await controller_factory()
    plain = await api.submit(script="#!/bin/sh\nsleep 30\n", time_limit_s=1, retry={"attempts": 3})
    rule = {"attempts": 2, "evaluate_on_exit": [{"on_reason": "timeout*", "action": "RETRY"}]}
    ruled = await api.submit(script="#!/bin/sh\nsleep 30\n", time_limit_s=1, retry=rule)
    for job in await api.wait(plain, ruled, timeout=60):
        assert job["state"] == "FAILED" and job["reason"].startswith("timeout"), job
    assert [a["attempt"] for a in (await api("show", job_id=plain))["attempts"]] == [1]
    assert [a["attempt"] for a in (await api("show", job_id=ruled))["attempts"]] == [1, 2]


async def test_signal_before_the_time_limit(sandbox: Sandbox, controller_factory: Any) -> None:
    _c, api = await controller_factory()
    script = "#!/bin/bash\ntrap 'echo warned; exit 0' USR1\nsleep 30 &\nwait\n"
    job_id = await api.submit(
        script=script,
        time_limit_s=4,
        warn_signal={"name": "USR1", "before_s": 3, "batch_only": True},
    )
    (job,) = await api.wait(job_id, timeout=60)
    assert job["state"] == "SUCCEEDED", job
    assert await api.logs(job_id) == "warned\n"  # at the limit, TERM would print nothing


async def test_a_bad_signal_is_refused(sandbox: Sandbox, controller_factory: Any) -> None:
    _c, api = await controller_factory()
    from hpcbatch.client import ClientError

    with pytest.raises(ClientError, match=r"warn_signal\.name"):
        await api.submit(warn_signal={"name": "NOPE"}, time_limit_s=5)
