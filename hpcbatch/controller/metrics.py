"""Prometheus metrics of the controller, served in the text format on an operator's address.

Off by default (`[metrics] address` in the inventory, or `hpcbatch controller
--metrics ADDR`). Collection stays off the hot path:

* what is a level (jobs by queue and state, hosts by state with their CPUs and
  GPUs, the scheduler's pass totals, the links' round trips and reconnects) is
  read from the live state at scrape time by a custom collector, so a submit or
  an exit pays nothing for it;
* what is an event (a submission, a completion, a job's wait and run time) is
  counted by an observer of the job service, which the service already calls
  after each state change: a dictionary look-up and, on a change that matters,
  one histogram or counter update;
* the API's latency is observed by a callback of the API server, one histogram
  update per request.

Each controller has its own registry (no module-level default registry), and
the endpoint is a small asyncio HTTP server on the controller's loop, so a
scrape reads the live state between two steps of the loop, never while a
service is changing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import generate_latest

from hpcbatch.core.records import JobRecord
from hpcbatch.core.states import HostState, JobState

if TYPE_CHECKING:
    from hpcbatch.controller.cluster import Cluster
    from hpcbatch.controller.jobs import JobService
    from hpcbatch.controller.scheduling import SchedulerLoop
    from hpcbatch.transport.pool import HostPool

log = logging.getLogger(__name__)

# Waits run from a second (an idle cluster) to days (a full one); runs alike.
TIME_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 7 * 86400)
API_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30)
# What generate_latest writes: the classic text format, which every Prometheus reads
# (newer clients name a newer version in CONTENT_TYPE_LATEST).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsError(ValueError):
    """A metrics address that cannot be used; the message says why."""


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `:PORT` (all interfaces) -> (host, port); `[::1]:9464` for IPv6."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise MetricsError(
            f"metrics address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464 or :9464"
        )
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class JobCounters:
    """The job service's observer: submissions, completions, wait and run times per queue."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.submissions = Counter(
            "hpcbatch_submissions",
            "Jobs accepted (each array child once), by queue",
            ["queue"],
            registry=registry,
        )
        self.refused = Counter(
            "hpcbatch_submissions_refused",
            "Submit requests refused at the API (nothing stored)",
            registry=registry,
        )
        self.completions = Counter(
            "hpcbatch_completions",
            "Jobs that reached a final state, by queue and outcome",
            ["queue", "outcome"],
            registry=registry,
        )
        self.wait = Histogram(
            "hpcbatch_job_wait_seconds",
            "Time from submission to the first start, by queue",
            ["queue"],
            buckets=TIME_BUCKETS,
            registry=registry,
        )
        self.run = Histogram(
            "hpcbatch_job_run_seconds",
            "Time from the first start to the final state, by queue and outcome",
            ["queue", "outcome"],
            buckets=TIME_BUCKETS,
            registry=registry,
        )
        # job id -> whether its wait was observed; only jobs not yet final
        self._seen: dict[int, bool] = {}

    def preload(self, jobs: Iterable[JobRecord]) -> None:
        """The jobs a restarted controller already had: not new submissions."""
        for job in jobs:
            self._seen[job.id] = job.started is not None

    def changed(self, job: JobRecord) -> None:
        if job.is_array_parent:
            return  # its children are counted, each as one job
        started = self._seen.get(job.id)
        if started is None:
            self.submissions.labels(job.queue).inc()
            started = False
        if not started and job.started is not None:
            self.wait.labels(job.queue).observe(max(0.0, job.started - job.submitted))
            started = True
        if job.state.is_final:
            self._seen.pop(job.id, None)
            outcome = str(job.state)
            self.completions.labels(job.queue, outcome).inc()
            if job.started is not None and job.ended is not None:
                self.run.labels(job.queue, outcome).observe(max(0.0, job.ended - job.started))
        else:
            self._seen[job.id] = started


class ApiLatency:
    """The API server's observer: one histogram of request latency by operation."""

    def __init__(self, registry: CollectorRegistry, counters: JobCounters) -> None:
        self._counters = counters
        self.latency = Histogram(
            "hpcbatch_api_request_seconds",
            "API request latency, by operation and outcome (ok or the error kind)",
            ["op", "outcome"],
            buckets=API_BUCKETS,
            registry=registry,
        )

    def __call__(self, op: str, outcome: str, seconds: float) -> None:
        self.latency.labels(op, outcome).observe(seconds)
        if op == "submit" and outcome != "ok":
            self._counters.refused.inc()


class LiveCollector:
    """Levels read from the live state at scrape time (a prometheus_client collector)."""

    def __init__(
        self, jobs: JobService, cluster: Cluster, scheduler: SchedulerLoop, pool: HostPool
    ) -> None:
        self._jobs = jobs
        self._cluster = cluster
        self._scheduler = scheduler
        self._pool = pool

    def describe(self) -> list[Metric]:
        return []  # collected on each scrape; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        yield from self._job_levels()
        yield from self._host_levels()
        yield from self._scheduler_totals()
        yield from self._link_totals()

    def _job_levels(self) -> Iterator[Metric]:
        counts: dict[tuple[str, str], int] = {}
        for queue in self._cluster.queue_enabled:
            for state in JobState:
                if not state.is_final:
                    counts[(queue, str(state))] = 0
        for job in self._jobs.live_jobs():
            if not job.is_array_parent:
                key = (job.queue, str(job.state))
                counts[key] = counts.get(key, 0) + 1
        fam = GaugeMetricFamily(
            "hpcbatch_jobs",
            "Active jobs (not final), by queue and state",
            labels=["queue", "state"],
        )
        for (queue, state_name), n in sorted(counts.items()):
            fam.add_metric([queue, state_name], n)
        yield fam
        enabled = GaugeMetricFamily(
            "hpcbatch_queue_enabled", "1 if the queue takes new starts", labels=["queue"]
        )
        for queue, on in self._cluster.queue_enabled.items():
            enabled.add_metric([queue], 1 if on else 0)
        yield enabled

    def _host_levels(self) -> Iterator[Metric]:
        by_state = {(str(s), "ACTIVE"): 0 for s in HostState}
        names = (
            "cpus",
            "cpus_allocated",
            "gpus",
            "gpus_allocated",
            "memory_mb",
            "memory_mb_allocated",
        )
        fams = {
            n: GaugeMetricFamily(
                f"hpcbatch_host_{n}", f"Host {n.replace('_', ' ')}", labels=["host"]
            )
            for n in names
        }
        for host in self._cluster.hosts.values():
            key = (str(host.state), str(host.admin))
            by_state[key] = by_state.get(key, 0) + 1
            cpus, mem, gpus, _ = host.used()
            values = (host.cpus or 0, cpus, len(host.gpus), len(gpus), host.memory_mb or 0, mem)
            for n, v in zip(names, values, strict=True):
                fams[n].add_metric([host.name], v)
        states = GaugeMetricFamily(
            "hpcbatch_hosts",
            "Hosts by link state and operator state (ACTIVE, DRAIN, DOWN)",
            labels=["state", "admin"],
        )
        for (state_name, admin), count in sorted(by_state.items()):
            states.add_metric([state_name, admin], count)
        yield states
        yield from fams.values()

    def _scheduler_totals(self) -> Iterator[Metric]:
        s = self._scheduler
        fam = SummaryMetricFamily(
            "hpcbatch_scheduler_pass_seconds", "Scheduling passes that planned something"
        )
        fam.add_metric([], count_value=s.passes, sum_value=s.total_pass_s)
        yield fam
        yield GaugeMetricFamily(
            "hpcbatch_scheduler_last_pass_seconds", "The last pass's time", value=s.last_pass_s
        )
        yield GaugeMetricFamily(
            "hpcbatch_scheduler_max_pass_seconds", "The longest pass so far", value=s.max_pass_s
        )

    def _link_totals(self) -> Iterator[Metric]:
        rtt = SummaryMetricFamily(
            "hpcbatch_host_link_rtt_seconds",
            "Round trips of requests to hosts' agents (request to reply)",
            labels=["host"],
        )
        last = GaugeMetricFamily(
            "hpcbatch_host_link_last_rtt_seconds", "The last round trip", labels=["host"]
        )
        reconnects = CounterMetricFamily(
            "hpcbatch_host_link_reconnects",
            "Connections made after the first (the link dropped and came back)",
            labels=["host"],
        )
        up = GaugeMetricFamily(
            "hpcbatch_host_link_up", "1 if the link is connected", labels=["host"]
        )
        for name, link in self._pool.items():
            stats = link.stats
            rtt.add_metric([name], count_value=stats.requests, sum_value=stats.rtt_sum_s)
            last.add_metric([name], stats.last_rtt_s)
            reconnects.add_metric([name], max(0, stats.connects - 1))
            up.add_metric([name], 1 if link.connected else 0)
        yield from (rtt, last, reconnects, up)


class Metrics:
    """The registry, its collectors and observers, and (when an address is set) the server."""

    def __init__(
        self, jobs: JobService, cluster: Cluster, scheduler: SchedulerLoop, pool: HostPool
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.jobs = JobCounters(self.registry)
        self.api = ApiLatency(self.registry, self.jobs)
        self.registry.register(LiveCollector(jobs, cluster, scheduler, pool))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """`GET /metrics` (any path) over HTTP/1.0 on the controller's loop."""

    def __init__(self, metrics: Metrics, address: str) -> None:
        self.metrics = metrics
        self.host, self.port = parse_address(address)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise MetricsError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            method = request.split(b" ", 1)[0]
            if method not in (b"GET", b"HEAD"):
                head, body = b"405 Method Not Allowed", b"only GET\n"
                ctype = "text/plain"
            else:
                head, body = b"200 OK", self.metrics.render()
                ctype = CONTENT_TYPE
            writer.write(
                b"HTTP/1.0 " + head + b"\r\n"
                + f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n".encode()
                + b"Connection: close\r\n\r\n"
                + (b"" if method == b"HEAD" else body)
            )  # fmt: skip
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
