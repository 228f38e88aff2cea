"""The metrics' pure parts: the address, the inventory's `[metrics]`, and the job counters."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hpcbatch.controller.metrics import JobCounters, MetricsError, parse_address
from hpcbatch.core.records import JobRecord
from hpcbatch.core.states import JobState
from hpcbatch.inventory import InventoryError, load_inventory


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address(":9464") == ("0.0.0.0", 9464)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("9464", "host:", "host:99999", "host:x"):
        with pytest.raises(MetricsError, match="expected HOST:PORT"):
            parse_address(bad)


def test_inventory_metrics_address(tmp_path: Path) -> None:
    path = tmp_path / "inv.toml"
    path.write_text('[metrics]\naddress = "127.0.0.1:9464"\n\n[[hosts]]\nname = "n1"\n')
    assert load_inventory(path).metrics_address == "127.0.0.1:9464"
    path.write_text('[[hosts]]\nname = "n1"\n')
    assert load_inventory(path).metrics_address is None
    path.write_text('[metrics]\naddress = "nowhere"\n\n[[hosts]]\nname = "n1"\n')
    with pytest.raises(InventoryError, match=r"metrics\.address"):
        load_inventory(path)


def job(state: JobState, started: float | None = None, ended: float | None = None) -> JobRecord:
    return JobRecord(
        id=7, name="j", user="u", uid=1000, queue="q", state=state, reason=None,
        request={}, submitted=100.0, started=started, ended=ended,
    )  # fmt: skip


def samples(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {
        s.name + str(sorted(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_job_counters_follow_one_job_through_its_states() -> None:
    reg = CollectorRegistry()
    counters = JobCounters(reg)
    counters.changed(job(JobState.RUNNABLE))
    counters.changed(job(JobState.STARTING, started=103.0))
    counters.changed(job(JobState.RUNNING, started=103.0))
    counters.changed(job(JobState.SUCCEEDED, started=103.0, ended=110.0))
    s = samples(reg)
    assert s["hpcbatch_submissions_total[('queue', 'q')]"] == 1
    assert s["hpcbatch_job_wait_seconds_count[('queue', 'q')]"] == 1
    assert s["hpcbatch_job_wait_seconds_sum[('queue', 'q')]"] == 3.0
    assert s["hpcbatch_job_run_seconds_sum[('outcome', 'SUCCEEDED'), ('queue', 'q')]"] == 7.0
    assert s["hpcbatch_completions_total[('outcome', 'SUCCEEDED'), ('queue', 'q')]"] == 1
    # A job a restarted controller already had is not a new submission.
    counters.preload([job(JobState.RUNNING, started=105.0)])
    counters.changed(job(JobState.FAILED, started=105.0, ended=106.0))
    s = samples(reg)
    assert s["hpcbatch_submissions_total[('queue', 'q')]"] == 1
    assert s["hpcbatch_job_wait_seconds_count[('queue', 'q')]"] == 1
    assert s["hpcbatch_completions_total[('outcome', 'FAILED'), ('queue', 'q')]"] == 1
