"""The events feed's pure parts: old and new states, filters, redaction, `--since`."""

from __future__ import annotations

from typing import Any

import pytest

from hpcbatch.cli.events import parse_since
from hpcbatch.controller.callers import Caller
from hpcbatch.controller.changes import ChangeFeed, EventsArgs, matches, redact
from hpcbatch.core.records import JobRecord
from hpcbatch.core.states import JobState


def job(state: JobState, user: str = "ann") -> JobRecord:
    return JobRecord(
        id=5, name="train", user=user, uid=1001, queue="gpu", state=state,
        reason="exit code 1" if state == JobState.FAILED else None, request={}, submitted=1.0,
    )  # fmt: skip


def test_feed_emits_changes_of_state_only() -> None:
    feed = ChangeFeed()
    seen: list[dict[str, Any]] = []
    feed.listeners.append(lambda e, _job: seen.append(e))
    for state in (JobState.RUNNABLE, JobState.RUNNABLE, JobState.RUNNING, JobState.FAILED):
        feed.job_changed(job(state))
    assert [(e["old"], e["new"]) for e in seen] == [
        (None, "RUNNABLE"),
        ("RUNNABLE", "RUNNING"),
        ("RUNNING", "FAILED"),
    ]
    assert seen[-1]["reason"] == "exit code 1" and seen[-1]["user"] == "ann"
    # Nobody listening: the old state is still kept, no event is built.
    quiet = ChangeFeed()
    quiet.job_changed(job(JobState.RUNNABLE))
    quiet.listeners.append(lambda e, _job: seen.append(e))
    quiet.job_changed(job(JobState.RUNNING))
    assert (seen[-1]["old"], seen[-1]["new"]) == ("RUNNABLE", "RUNNING")


def test_filters_and_redaction() -> None:
    feed = ChangeFeed()
    seen: list[dict[str, Any]] = []
    feed.listeners.append(lambda e, _job: seen.append(e))
    feed.job_changed(job(JobState.FAILED))
    (event,) = seen
    assert matches(event, EventsArgs(user="ann", queue="gpu", job=5, states=["FAILED"]))
    assert not matches(event, EventsArgs(user="bob"))
    assert not matches(event, EventsArgs(states=["SUCCEEDED"]))
    host = {"kind": "host", "host": "n1", "new": "DOWN"}
    assert not matches(host, EventsArgs(user="ann")) and matches(host, EventsArgs())
    other = Caller(uid=4242, user="bob")
    hidden = redact(event, other)
    assert "user" not in hidden and "name" not in hidden and "reason" not in hidden
    assert (hidden["job"], hidden["queue"], hidden["new"]) == (5, "gpu", "FAILED")
    assert redact(event, Caller(uid=4243, user="ann")) == event
    assert redact(event, Caller(uid=0, user="root")) == event


def test_parse_since() -> None:
    now = 1_800_000_000.0
    assert parse_since("10m", now) == now - 600
    assert parse_since("2h", now) == now - 7200
    assert parse_since("1.5d", now) == now - 1.5 * 86400
    assert parse_since("1700000000", now) == 1_700_000_000
    assert parse_since("2026-12-07T12:00", now) == parse_since("2026-12-07T12:00:00Z", now)
    assert parse_since("2026-12-07T13:00+01:00", now) == parse_since("2026-12-07T12:00Z", now)
    with pytest.raises(ValueError, match="--since 'soon': expected an age"):
        parse_since("soon", now)
