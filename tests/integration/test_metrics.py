"""The metrics endpoint scraped over real HTTP, parsed by the Prometheus client's parser,
and its figures checked against jobs run on the sandbox's sshd hosts."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hpcbatch.client import ClientError
from hpcbatch.controller.app import Controller, ControllerError
from hpcbatch.sandbox import Sandbox
from tests.integration import conftest
from tests.integration.conftest import Api, short_home

pytestmark = pytest.mark.sshd

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(c: Controller) -> tuple[str, Samples]:
    assert c.metrics_server is not None
    url = f"http://127.0.0.1:{c.metrics_server.port}/metrics"

    def get() -> tuple[str, str]:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.headers["Content-Type"], reply.read().decode()

    ctype, text = await asyncio.to_thread(get)
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return ctype, samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


async def test_scrape_counts_the_jobs_run(
    controller_factory: Callable[..., Any], sandbox: Sandbox
) -> None:
    c, api = await controller_factory(metrics="127.0.0.1:0")
    ok = [await api.submit(script="#!/bin/sh\nsleep 0.2\n") for _ in range(3)]
    bad = await api.submit(script="#!/bin/sh\nexit 3\n")
    with pytest.raises(ClientError):
        await api.submit(cpus=100_000)  # no host could ever run it: refused, not stored
    done = await api.wait(*ok, bad)
    assert [j["state"] for j in done] == ["SUCCEEDED"] * 3 + ["FAILED"]
    sleeper = await api.submit(script="#!/bin/sh\nsleep 60\n", cpus=2)
    for _ in range(300):
        (job,) = await api("jobs", ids=[sleeper], all=True)
        if job["state"] == "RUNNING":
            break
        await asyncio.sleep(0.05)
    host = job["hosts"][0]

    ctype, m = await scrape(c)
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
    assert total(m, "hpcbatch_submissions_total", queue="batch") == 5
    assert total(m, "hpcbatch_submissions_refused_total") == 1
    assert total(m, "hpcbatch_completions_total", queue="batch", outcome="SUCCEEDED") == 3
    assert total(m, "hpcbatch_completions_total", queue="batch", outcome="FAILED") == 1
    assert total(m, "hpcbatch_job_wait_seconds_count", queue="batch") == 5
    # Each finished job's run time went into its outcome's histogram, in the right buckets.
    assert total(m, "hpcbatch_job_run_seconds_count", outcome="SUCCEEDED") == 3
    assert total(m, "hpcbatch_job_run_seconds_bucket", outcome="SUCCEEDED", le="1.0") == 3
    runs = [j["ended"] - j["started"] for j in done]
    assert total(m, "hpcbatch_job_run_seconds_sum") == pytest.approx(sum(runs), abs=1e-6)
    # Levels read live: one job running, holding its 2 CPUs on its host.
    assert total(m, "hpcbatch_jobs", queue="batch", state="RUNNING") == 1
    assert total(m, "hpcbatch_jobs", queue="batch", state="RUNNABLE") == 0
    assert total(m, "hpcbatch_host_cpus_allocated", host=host) == 2
    assert total(m, "hpcbatch_host_cpus_allocated") == 2
    cpus = sum(h.cpus or 0 for h in c.cluster.hosts.values())
    gpus = sum(len(h.gpus) for h in c.cluster.hosts.values())
    assert total(m, "hpcbatch_host_cpus") == cpus > 0
    assert total(m, "hpcbatch_host_gpus") == gpus > 0
    assert total(m, "hpcbatch_hosts", state="UP") == len(sandbox.hosts)
    assert total(m, "hpcbatch_host_link_up") == len(sandbox.hosts)
    assert total(m, "hpcbatch_host_link_reconnects_total") == 0
    # The launches were requests to the agents: their round trips were measured.
    assert total(m, "hpcbatch_host_link_rtt_seconds_count", host=host) >= 1
    assert total(m, "hpcbatch_scheduler_pass_seconds_count") >= 1
    assert total(m, "hpcbatch_api_request_seconds_count", op="submit", outcome="ok") == 5
    assert total(m, "hpcbatch_api_request_seconds_count", op="submit", outcome="infeasible") == 1

    # Every metric the Grafana dashboard queries is one the controller exports.
    dashboard = DASHBOARD.read_text()
    exported = {name for name, _ in m}
    for name in set(re.findall(r"hpcbatch_[a-z_]+", dashboard)) - {"hpcbatch_overview"}:
        assert name in exported, f"the dashboard queries {name}, which is not exported"

    await api("cancel", job_ids=[sleeper])
    await api.wait(sleeper)
    _, m = await scrape(c)
    assert total(m, "hpcbatch_jobs", queue="batch", state="RUNNING") == 0
    assert total(m, "hpcbatch_host_cpus_allocated") == 0
    assert total(m, "hpcbatch_completions_total", outcome="FAILED") == 2


async def test_metrics_off_by_default_and_a_bad_address_is_refused(
    cluster: tuple[Controller, Api], sandbox: Sandbox
) -> None:
    c, _api = cluster
    assert c.metrics is None and c.metrics_server is None
    with pytest.raises(ControllerError, match="metrics address 'nowhere'"):
        Controller(
            conftest.test_settings(sandbox.inventory, short_home(), metrics="nowhere"),
            c.inventory,
            c.store,
        )
