"""The job service's intents and the scheduler loop, on a real store and fake hosts.

Each test runs a job's life through the controller's middle (submit -> intent
-> store -> scheduler -> launcher -> fake link -> exit event -> intent ->
store) with no SSH and no sleeps: milliseconds each.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.controller.app import Controller
from hpcbatch.controller.cancel import cancel_jobs
from hpcbatch.core.gang import STOP_GRACE_S
from hpcbatch.core.records import AttemptState
from hpcbatch.core.states import JobState
from tests.unit.middle import ALICE, BOB, FakeLink, build, close, refuse, settle

SCRIPT = "#!/bin/sh\ntrue\n"


@pytest.fixture
async def middle(tmp_path: Path) -> AsyncIterator[tuple[Controller, dict[str, FakeLink]]]:
    c, links = await build(tmp_path)
    yield c, links
    await close(c)


def exit_event(attempt: str, code: int | None = 0, **more: Any) -> dict[str, Any]:
    return {"attempt": attempt, "code": code, "signal": None, "ended": 2000.0, **more}


async def submit(c: Controller, **request: Any) -> int:
    out = await c.submitter.submit({"script": SCRIPT, **request}, ALICE)
    return int(out["job_id"])


async def run_one(c: Controller, **request: Any) -> int:
    """Submit, schedule and launch a job; it is RUNNING when this returns."""
    job_id = await submit(c, **request)
    assert await c.scheduler.pass_once() == 1
    await settle(c)
    return job_id


async def states(c: Controller, job_id: int) -> list[tuple[str, str]]:
    return [(str(t.old), str(t.new)) for t in await c.store.jobs.transitions(job_id)]


async def test_accept_writes_the_job_and_keeps_it_live(middle: Any) -> None:
    c, _links = middle
    seen: list[tuple[int, JobState]] = []
    c.jobs.observe(lambda job: seen.append((job.id, job.state)))
    job_id = await submit(c, name="hello")
    live = c.jobs.live(job_id)
    stored = await c.store.jobs.get_job(job_id)
    assert live is not None and stored is not None
    assert live.state == stored.state == JobState.RUNNABLE
    assert stored.request == live.request and stored.request["queue"] == "default"
    assert seen == [(job_id, JobState.RUNNABLE)]
    assert [j.id for j in c.jobs.live_jobs()] == [job_id] and c.jobs.runnable() == [live]


async def test_start_plan_launches_and_the_reply_marks_it_running(middle: Any) -> None:
    c, links = middle
    job_id = await run_one(c, env={"GREETING": "hi"})
    job = c.jobs.live(job_id)
    assert job is not None and job.state == JobState.RUNNING
    (a,) = c.jobs.current_attempts(job)
    launch = links[a.host].ops("launch")
    assert len(launch) == 1 and launch[0]["attempt"] == f"{job_id}.1.0"
    assert launch[0]["script"] == SCRIPT and launch[0]["env"]["GREETING"] == "hi"
    assert launch[0]["env"]["HPCBATCH_JOB_ID"] == str(job_id)
    assert a.state == AttemptState.RUNNING and a.started == 1000.0
    assert await states(c, job_id) == [
        ("None", "SUBMITTED"),
        ("SUBMITTED", "RUNNABLE"),
        ("RUNNABLE", "STARTING"),
        ("STARTING", "RUNNING"),
    ]
    assert c.cluster.hosts[a.host].holders  # its resources are held


async def test_an_exit_finishes_the_job_releases_it_and_is_acknowledged(middle: Any) -> None:
    c, links = middle
    job_id = await run_one(c)
    job = c.jobs.live(job_id)
    assert job is not None
    host = job.attempts[0].host
    await c.jobs.on_exit(host, exit_event(f"{job_id}.1.0", code=0))
    await settle(c)
    assert c.jobs.live(job_id) is None
    stored = await c.store.jobs.get_job(job_id)
    assert stored is not None and stored.state == JobState.SUCCEEDED
    assert stored.reason == "exit code 0" and stored.exit_code == 0 and stored.ended == 2000.0
    assert not c.cluster.hosts[host].holders
    assert links[host].ops("ack") == [{"attempts": [f"{job_id}.1.0"]}]
    await c.jobs.wait_final([job_id], timeout=0.1)  # final: returns at once


async def test_a_failed_attempt_is_retried_then_fails(middle: Any) -> None:
    c, _links = middle
    job_id = await run_one(c, retry={"attempts": 2})
    job = c.jobs.live(job_id)
    assert job is not None
    await c.jobs.on_exit(job.attempts[0].host, exit_event(f"{job_id}.1.0", code=3))
    assert job.state == JobState.RUNNABLE and job.attempt == 1
    assert (job.reason or "").startswith("Retry: attempt 1 failed (exit code 3)")
    assert await c.scheduler.pass_once() == 1
    await settle(c)
    assert job.attempt == 2 and job.state == JobState.RUNNING
    await c.jobs.on_exit(job.attempts[0].host, exit_event(f"{job_id}.2.0", code=3))
    stored = await c.store.jobs.get_job(job_id)
    assert stored is not None and stored.state == JobState.FAILED and stored.reason == "exit code 3"


async def test_a_stale_exit_changes_nothing_but_is_acknowledged(middle: Any) -> None:
    c, links = middle
    job_id = await run_one(c)
    await c.jobs.on_exit("node1", exit_event(f"{job_id}.7.0", code=1))
    await c.jobs.on_exit("node1", {"attempt": "nonsense"})
    await settle(c)
    job = c.jobs.live(job_id)
    assert job is not None and job.state == JobState.RUNNING
    assert links["node1"].ops("ack") == [{"attempts": [f"{job_id}.7.0"]}]


async def test_an_exit_that_overtakes_the_launch_reply_records_the_run(middle: Any) -> None:
    c, links = middle
    for link in links.values():
        link.connected = False  # the launch waits for the host: the job stays STARTING
    job_id = await submit(c)
    assert await c.scheduler.pass_once() == 1
    await settle(c)
    job = c.jobs.live(job_id)
    assert job is not None and job.state == JobState.STARTING
    await c.jobs.on_exit(job.attempts[0].host, exit_event(f"{job_id}.1.0", code=0, started=1500.0))
    assert (await states(c, job_id))[-2:] == [("STARTING", "RUNNING"), ("RUNNING", "SUCCEEDED")]
    stored = await c.store.jobs.get_job(job_id)
    assert stored is not None and stored.started == 1500.0


async def test_a_refused_launch_fails_the_job(middle: Any) -> None:
    c, links = middle
    for link in links.values():
        link.replies["launch"] = refuse("no such interpreter")
    job_id = await run_one(c)
    stored = await c.store.jobs.get_job(job_id)
    assert stored is not None and stored.state == JobState.FAILED
    assert stored.reason == "launch failed on node1: no such interpreter"


async def test_a_launch_error_naming_exists_is_no_duplicate(middle: Any) -> None:
    """The code decides: a missing `--chdir /data/exists` fails the job (it used to be
    taken for "already launched" and the job stayed STARTING forever)."""
    c, links = middle
    for link in links.values():
        why = "working directory /data/exists does not exist (or is not a directory)"
        link.replies["launch"] = refuse(why, "bad_path")
    job_id = await run_one(c)
    stored = await c.store.jobs.get_job(job_id)
    assert stored is not None and stored.state == JobState.FAILED
    assert stored.reason is not None and "/data/exists does not exist" in stored.reason


async def test_an_already_launched_attempt_is_left_to_run(middle: Any) -> None:
    c, links = middle
    for link in links.values():
        link.replies["launch"] = refuse("attempt 1.1.0 already exists", "exists")
    job_id = await run_one(c)
    job = c.jobs.live(job_id)
    assert job is not None and job.state == JobState.STARTING  # its exit will come


async def test_cancel_fails_unstarted_jobs_and_terminates_running_ones(middle: Any) -> None:
    c, links = middle
    running = await run_one(c, cpus=4)
    waiting = await submit(c, cpus=4)
    waiting2 = await submit(c, cpus=4)
    await c.scheduler.pass_once()  # one more fits (two hosts): waiting starts too
    await settle(c)
    links["node1"].replies["kill"] = lambda f: {"found": True}
    links["node2"].replies["kill"] = lambda f: {"found": False}
    out = await c.jobs.cancel(
        [j for j in c.jobs.live_jobs() if j.id in (running, waiting, waiting2)], "alice", None
    )
    by_id = {r["job_id"]: r["result"] for r in out}
    assert by_id[waiting2] == "cancelled"
    started = {j: c.jobs.live(j) for j in (running, waiting)}
    results = {by_id[running], by_id[waiting]}
    assert results == {"terminating", "terminated"}
    for job_id, result in ((running, by_id[running]), (waiting, by_id[waiting])):
        stored = await c.store.jobs.get_job(job_id)
        assert stored is not None
        if result == "terminated":  # its host did not find it: failed now
            assert stored.state == JobState.FAILED and stored.reason == "terminated by alice"
        else:  # killed: the exit event ends it
            assert stored.state == JobState.RUNNING and started[job_id] is not None
    stored = await c.store.jobs.get_job(waiting2)
    assert stored is not None and stored.reason == "cancelled by alice"


async def test_cancel_through_the_api_checks_the_owner(middle: Any) -> None:
    c, _links = middle
    job_id = await submit(c)
    out = await cancel_jobs(c.jobs, c.store, c.arrays, {"job_ids": [str(job_id)]}, BOB)
    assert out == [
        {"job_id": job_id, "display_id": str(job_id), "result": "forbidden: not your job"}
    ]
    out = await cancel_jobs(c.jobs, c.store, c.arrays, {"job_ids": [str(job_id)]}, ALICE)
    assert out == [{"job_id": job_id, "display_id": str(job_id), "result": "cancelled"}]
    out = await cancel_jobs(c.jobs, c.store, c.arrays, {"job_ids": [str(job_id)]}, ALICE)
    assert out == [{"job_id": job_id, "result": "already FAILED"}]


async def test_a_gang_launches_the_main_node_last_and_fails_fast(middle: Any) -> None:
    c, links = middle
    order: list[str] = []
    for link in links.values():
        link.replies["launch"] = lambda f: order.append(f["attempt"]) or {"started": 1000.0}
    job_id = await run_one(c, nodes=2, launch_mode="all")
    job = c.jobs.live(job_id)
    assert job is not None and job.state == JobState.RUNNING
    assert order == [f"{job_id}.1.1", f"{job_id}.1.0"]
    main, other = sorted(c.jobs.current_attempts(job), key=lambda a: a.node)
    await c.jobs.on_exit(other.host, exit_event(other.attempt_id, code=0))
    assert job.state == JobState.RUNNING and other.state == AttemptState.EXITED  # its part done
    await c.jobs.on_exit(main.host, exit_event(main.attempt_id, code=5))
    stored = await c.store.jobs.get_job(job_id)
    assert stored is not None and stored.state == JobState.FAILED and stored.reason == "exit code 5"


async def test_a_gang_node_failing_stops_the_others(middle: Any) -> None:
    c, links = middle
    job_id = await run_one(c, nodes=2, launch_mode="all")
    job = c.jobs.live(job_id)
    assert job is not None
    main, other = sorted(c.jobs.current_attempts(job), key=lambda a: a.node)
    await c.jobs.on_exit(other.host, exit_event(other.attempt_id, code=2))
    await settle(c)
    stored = await c.store.jobs.get_job(job_id)
    assert stored is not None and stored.state == JobState.FAILED
    assert stored.reason == f"node 1 ({other.host}) failed: exit code 2"
    assert main.state == AttemptState.LOST and main.reason == f"stopped: {stored.reason}"
    (kill,) = links[main.host].ops("kill")
    assert kill["attempt"] == main.attempt_id and kill["grace_s"] == STOP_GRACE_S


async def test_a_lost_host_fails_its_gangs_as_host_failures(middle: Any) -> None:
    c, _links = middle
    gang = await run_one(c, nodes=2, cpus=1, retry={"attempts": 2})
    await c.jobs.host_lost("node2", "connection reset")
    job = c.jobs.live(gang)
    assert job is not None and job.state == JobState.RUNNABLE  # retried (its rules)
    assert "host node2 lost (node" in (job.reason or "")
    assert all(a.state == AttemptState.LOST for a in job.attempts)
    assert not c.cluster.hosts["node1"].holders and not c.cluster.hosts["node2"].holders
    await c.jobs.cancel([job], "alice", None)
    single = await run_one(c, cpus=1)
    alone = c.jobs.live(single)
    assert alone is not None
    await c.jobs.host_lost(alone.attempts[0].host, "connection reset")
    assert alone.state == JobState.RUNNING  # a single node keeps running: its exit comes later


async def test_an_array_is_accepted_in_one_write_and_summarised(middle: Any) -> None:
    c, _links = middle
    out = await c.submitter.submit({"script": SCRIPT, "array": "0-3"}, ALICE)
    parent_id, size = out["job_id"], out["array_size"]
    assert size == 4
    children = [j for j in c.jobs.live_jobs() if j.array_parent == parent_id]
    assert sorted(j.array_index or 0 for j in children) == [0, 1, 2, 3]
    assert c.jobs.live(parent_id) is None and parent_id in c.jobs.array_parents
    await c.arrays.flush()
    parent = c.jobs.array_parents[parent_id]
    assert parent.reason == "4 RUNNABLE"
    out2 = await c.jobs.cancel(children, "alice", None)
    assert {r["result"] for r in out2} == {"cancelled"}
    await c.arrays.flush()
    stored = await c.store.jobs.get_job(parent_id)
    assert stored is not None and stored.state == JobState.FAILED
    assert parent_id not in c.jobs.array_parents


async def test_a_dependency_is_released_when_it_is_satisfied(middle: Any) -> None:
    c, _links = middle
    first = await run_one(c)
    waiter = await submit(c, dependency=f"afterok:{first}")
    job = c.jobs.live(waiter)
    assert job is not None and job.state == JobState.PENDING
    a = c.jobs.current_attempts(c.jobs.live(first))[0]  # type: ignore[arg-type]
    await c.jobs.on_exit(a.host, exit_event(a.attempt_id, code=0))
    await settle(c)  # the exit's observers settle the dependencies in a background task
    await c.deps.settle()
    assert job.state == JobState.RUNNABLE
    assert (await states(c, waiter))[-1] == ("PENDING", "RUNNABLE")


async def test_a_pass_with_nothing_that_fits_notes_why(middle: Any) -> None:
    c, _links = middle
    await run_one(c, cpus=4)
    await run_one(c, cpus=4)
    job_id = await submit(c, cpus=4)
    assert await c.scheduler.pass_once() == 0
    job = c.jobs.live(job_id)
    assert job is not None and job.state == JobState.RUNNABLE
    assert (job.reason or "").startswith("Resources")
    assert c.scheduler.passes >= 3


async def test_the_scheduler_loop_runs_when_woken_and_stops(middle: Any) -> None:
    c, _links = middle
    events = c.bus.subscribe()
    c.scheduler.start()
    job_id = await submit(c)  # the submit wakes the loop: no timer
    while True:
        ev = await asyncio.wait_for(events.get(), timeout=5)
        assert ev is not None
        job = ev.get("job") or {}
        if job.get("id") == job_id and job.get("state") == "RUNNING":
            break
    await c.scheduler.stop()
    assert c.scheduler.passes >= 1 and c.scheduler.total_plan_s > 0
    c.bus.unsubscribe(events)
