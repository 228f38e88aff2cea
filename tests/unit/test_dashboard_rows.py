"""The dashboard's pure parts: squeue filters, arrays collapsed, columns at 80 cells,
host state words, pending reasons in plain words, events applied to the model."""

from __future__ import annotations

import pytest

from hpcbatch.dashboard.model import Model, host_state
from hpcbatch.dashboard.rows import FilterError, JobFilter, fit_columns, job_rows
from hpcbatch.dashboard.words import bar, counts_text, explain
from tests.dashboard import sample


def test_filter_takes_squeue_flags_and_short_states() -> None:
    f = JobFilter.parse("-t R,PD --user=bob -p short -w node3 -j 103 pre")
    assert f.states == {"RUNNING", "PENDING"}
    assert f.users == {"bob"} and f.queues == {"short"} and f.hosts == {"node3"}
    assert f.ids == {"103"} and f.words == ("pre",)
    m = sample.model()
    assert [r.key for r in job_rows(m, f, now=sample.NOW)] == ["103"]


@pytest.mark.parametrize(
    ("text", "message"),
    [("-t BOGUS", "-t BOGUS: not a job state"), ("-x 1", "unknown flag -x"), ("-u", "-u needs")],
)
def test_bad_filters_name_the_flag(text: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        JobFilter.parse(text)


def test_arrays_collapse_with_counts_and_expand() -> None:
    m = sample.model()
    rows = job_rows(m, JobFilter(), now=sample.NOW)
    array = next(r for r in rows if r.key == "120")
    assert array.kind == "array" and array.id_text == "▸120_[0-11]"
    assert array.values["reason"] == "Q 5 · R 2 · OK 4 · F 1"
    assert not any(r.kind == "child" for r in rows)
    rows = job_rows(m, JobFilter.parse("-t F"), now=sample.NOW, expanded=[120])
    assert [r.key for r in rows] == ["108", "120", "120_4"]  # only the failed child


def test_hide_finished_and_sorting() -> None:
    m = sample.model()
    keys = [r.key for r in job_rows(m, JobFilter(), now=sample.NOW, hide_final=True)]
    assert "107" not in keys and "108" not in keys and "120" in keys
    by_time = job_rows(m, JobFilter(), now=sample.NOW, sort="elapsed", reverse=True)
    assert by_time[0].key == "104"  # ran longest


def test_columns_fit_80_cells_keeping_the_essentials() -> None:
    cols = fit_columns(["id", "name", "user", "queue", "state", "nodes", "elapsed", "limit",
                        "reason"], 78)  # fmt: skip
    keys = [c.key for c, _ in cols]
    assert {"id", "name", "state", "elapsed", "reason"} <= set(keys)
    assert sum(w for _, w in cols) + len(cols) - 1 == 78


def test_host_state_words() -> None:
    hosts = {h["name"]: host_state(h) for h in sample.hosts()}
    assert hosts == {
        "node1": "allocated", "node2": "allocated", "node3": "mixed", "node4": "idle",
        "node5": "mixed", "node6": "drained", "node7": "unreachable", "node8": "mixed",
    }  # fmt: skip


def test_pending_reasons_in_plain_words() -> None:
    said, advice = explain("RUNNABLE", "QueueDisabled: queue batch is disabled")
    assert "queue is disabled" in said and "enable" in advice
    assert explain("RUNNING", "anything") == ("", "")
    assert explain("RUNNABLE", "Something new: x") == ("Something new: x", "")


def test_bars_and_counts() -> None:
    assert bar(0, 8, 4) == ("", "░░░░")
    assert bar(1, 100, 4) == ("█", "░░░")  # a little is never drawn as nothing
    assert bar(8, 8, 4) == ("████", "")
    assert counts_text({"FAILED": 1, "RUNNING": 2}) == "R 2 · F 1"


def test_events_update_the_model_by_id() -> None:
    m = Model()
    m.load([], sample.hosts(), sample.queues())
    job = sample.job(7, "x", "RUNNABLE")
    assert m.apply({"event": "job", "job": job}) is False
    assert m.apply({"event": "job", "job": {**job, "state": "RUNNING"}}) is True  # hosts change
    assert m.jobs[7]["state"] == "RUNNING" and len(m.jobs) == 1
    m.apply({"event": "queue", "queue": "batch", "state": "ENABLED"})
    assert m.queues["batch"]["state"] == "ENABLED"
    assert m.queue_counts("default") == {"RUNNING": 1}


def test_filter_by_tags() -> None:
    f = JobFilter.parse("--tag project=x,stage=prod")
    assert f.tags == {"project=x", "stage=prod"}
    job = {"id": 1, "name": "a", "tags": {"project": "x", "stage": "prod", "k": "v"}}
    assert f.matches(job)
    assert not f.matches({**job, "tags": {"project": "x"}})
    assert not f.matches({"id": 2, "name": "b"})
    assert JobFilter.parse("--tag=project=x").matches(job)
