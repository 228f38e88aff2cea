"""core.exits.decide_exit: what one node's exit does to its job (pure, no store)."""

from __future__ import annotations

from typing import Any

from hpcbatch.core.exits import decide_exit, host_failure_retry, killed_on_request
from hpcbatch.core.records import AttemptRecord, AttemptState, JobRecord, Placement, new_attempts
from hpcbatch.core.states import JobState


def running_job(attempt: int = 1, **request: Any) -> JobRecord:
    request = {"script": "#!/bin/sh\n", **request}
    nodes = int(request.get("nodes") or 1)
    job = JobRecord(1, "j", "alice", 1000, "default", JobState.RUNNING, None, request, 0.0)
    job.attempt = attempt
    places = [Placement(f"node{i}", 1, 0) for i in range(nodes)]
    job.attempts = new_attempts(1, attempt, places, 10.0)
    for a in job.attempts:
        a.state = AttemptState.RUNNING
    return job


def node(job: JobRecord, index: int) -> AttemptRecord:
    return next(a for a in job.attempts if a.node == index)


def ev(code: int | None = 0, **more: Any) -> dict[str, Any]:
    return {"attempt": "1.1.0", "code": code, "signal": None, "ended": 50.0, **more}


def test_exit_zero_succeeds() -> None:
    job = running_job()
    d = decide_exit(job, node(job, 0), ev(0, started=20), now=99.0)
    assert (d.job_state, d.job_reason, d.attempt_reason) == (
        JobState.SUCCEEDED,
        "exit code 0",
        "exit code 0",
    )
    assert (d.started, d.ended, d.exit_code, d.retried) == (20.0, 50.0, 0, False)


def test_failures_say_why() -> None:
    job = running_job(time_limit_s=60)
    assert decide_exit(job, node(job, 0), ev(3), 0).job_reason == "exit code 3"
    assert decide_exit(job, node(job, 0), ev(None, signal=9), 0).job_reason == "killed by SIGKILL"
    timed_out = decide_exit(job, node(job, 0), ev(None, timed_out=True), 0)
    assert timed_out.job_state == JobState.FAILED
    assert timed_out.job_reason == "timeout: exceeded its time limit of 1:00"
    lost = decide_exit(job, node(job, 0), {"attempt": "1.1.0"}, now=77.0)
    assert (lost.job_reason, lost.ended, lost.started) == ("lost: no exit status", 77.0, None)


def test_a_failed_attempt_with_attempts_left_is_retried() -> None:
    job = running_job(retry={"attempts": 2})
    d = decide_exit(job, node(job, 0), ev(4), 0)
    assert d.retried and d.job_state == JobState.RUNNABLE
    assert d.job_reason.startswith("Retry: attempt 1 failed (exit code 4)")
    assert d.attempt_reason == "exit code 4"
    last = running_job(attempt=2, retry={"attempts": 2})
    assert decide_exit(last, node(last, 0), ev(4), 0).job_state == JobState.FAILED


def test_a_kill_the_controller_asked_for_is_not_retried_but_a_failed_pull_is() -> None:
    job = running_job(retry={"attempts": 3})
    cancelled = ev(None, signal=15, killed=True, reason="terminated by alice")
    assert decide_exit(job, node(job, 0), cancelled, 0).job_state == JobState.FAILED
    pull = ev(None, reason="image: not found on node0", retryable=True)
    assert decide_exit(job, node(job, 0), pull, 0).job_state == JobState.RUNNABLE
    assert killed_on_request({"reason": "fenced"}) and not killed_on_request({"reason": "lost x"})


def test_in_launch_mode_all_a_node_done_leaves_the_job_running() -> None:
    job = running_job(nodes=2, launch_mode="all")
    d = decide_exit(job, node(job, 1), ev(0), 0)
    assert d.job_state is None and not d.retried


def test_a_failed_node_fails_the_gang_and_stops_the_others() -> None:
    job = running_job(nodes=3, launch_mode="all")
    d = decide_exit(job, node(job, 2), ev(1), 0)
    assert d.job_state == JobState.FAILED
    assert d.job_reason == "node 2 (node2) failed: exit code 1"
    assert d.others_reason == "stopped: node 2 (node2) failed: exit code 1"
    holder = running_job(nodes=2)  # launch mode main: node 1 holds, node 0 runs the script
    d = decide_exit(holder, node(holder, 1), ev(0), 0)
    assert d.job_reason == "node 1 (node1) failed: its holder process ended (exit code 0)"


def test_a_cancelled_gang_ends_for_the_cancel_whichever_node_ends_first() -> None:
    job = running_job(nodes=3)
    killed = ev(None, signal=15, killed=True, reason="terminated by alice")
    d = decide_exit(job, node(job, 2), killed, 0)
    assert (d.job_state, d.job_reason) == (JobState.FAILED, "terminated by alice")
    assert d.others_reason == "stopped: terminated by alice"
    main = decide_exit(job, node(job, 0), killed, 0)
    assert (main.job_state, main.job_reason) == (JobState.FAILED, "terminated by alice")


def test_the_main_node_ending_ends_the_gang() -> None:
    job = running_job(nodes=2)
    d = decide_exit(job, node(job, 0), ev(0), 0)
    assert d.job_state == JobState.SUCCEEDED
    assert d.others_reason == "stopped: the main node (node0) ended: exit code 0"


def test_host_failures_follow_the_retry_rules() -> None:
    assert host_failure_retry(running_job(), "host node0 lost: gone") is None
    again = host_failure_retry(running_job(retry={"attempts": 2}), "host node0 lost: gone")
    assert again is not None and again.startswith("Retry: attempt 1 failed (host node0 lost")


def test_a_cancel_ends_a_gang_for_its_reason_whichever_node_reports_first() -> None:
    job = running_job(nodes=3)
    first = ev(None, signal=15, killed=True, reason="terminated by root", attempt="1.1.2")
    d = decide_exit(job, node(job, 2), first, 0)
    assert d.job_state == JobState.FAILED and d.job_reason == "terminated by root"
    died = decide_exit(job, node(job, 2), ev(None, signal=9), 0)  # not asked: a failure
    assert died.job_reason == "node 2 (node2) failed: its holder process ended (killed by SIGKILL)"
