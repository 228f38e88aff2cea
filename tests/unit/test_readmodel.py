"""The read model against fakes of what it asks: the store's queries, the job
service's read methods, the scheduler's counters and the host links.

What it must get right is the merge: a live job is shown with its in-memory
pending reason over the stored row, listed from memory by default, and a
`wait` reads final jobs from the store once and keeps the order asked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.controller.apiargs import JobsArgs
from hpcbatch.controller.callers import ApiError, Caller
from hpcbatch.controller.cluster import Cluster
from hpcbatch.controller.readmodel import PUBLIC_FIELDS, HostReads, ReadModel
from hpcbatch.core.records import AttemptRecord, AttemptState, JobRecord
from hpcbatch.core.states import JobState
from hpcbatch.inventory import load_inventory
from hpcbatch.store.rows import Transition
from hpcbatch.transport.pool import AgentError, HostUnavailable

EXAMPLE = Path(__file__).resolve().parents[2] / "inventory" / "example-cluster.toml"


ANN = Caller(uid=4242, user="ann")
BOB = Caller(uid=4343, user="bob")
CAROL = Caller(uid=4444, user="carol", listed=True)  # in the inventory's admins
ROOT = Caller(uid=0, user="root")


def job(job_id: int, state: JobState, reason: str | None = None, **kw: Any) -> JobRecord:
    return JobRecord(id=job_id, name=f"j{job_id}", user=kw.pop("user", "ann"), uid=1000,
                     queue="batch", state=state, reason=reason, request={"script": "true"},
                     submitted=float(job_id), **kw)  # fmt: skip


def attempt(job_id: int, host: str, node: int = 0) -> AttemptRecord:
    return AttemptRecord(job_id=job_id, attempt=1, node=node, host=host, cpus=1, memory_mb=1,
                         gpus=(), state=AttemptState.RUNNING, created=0.0)  # fmt: skip


class FakeStore:
    def __init__(self, *jobs: JobRecord) -> None:
        self.rows = {j.id: j for j in jobs}
        self.queries = 0

    def _copy(self, j: JobRecord) -> JobRecord:
        return dataclasses.replace(j, attempts=list(j.attempts))

    async def get_job(self, job_id: int) -> JobRecord | None:
        self.queries += 1
        row = self.rows.get(job_id)
        return None if row is None else self._copy(row)

    async def transitions(self, job_id: int) -> list[Transition]:
        return [Transition(job_id, 1.0, None, "SUBMITTED", None)]

    async def list_jobs(self, *, states: Sequence[str] = (), user: str | None = None,
                        queue: str | None = None, name: str | None = None,
                        ids: Sequence[int] = (), array_parents: Sequence[int] = (),
                        limit: int = 10_000) -> list[JobRecord]:  # fmt: skip
        self.queries += 1
        out = [
            self._copy(j)
            for j in sorted(self.rows.values(), key=lambda j: j.id)
            if (not states or str(j.state) in states)
            and (not ids or j.id in ids)
            and (user is None or j.user == user)
        ]
        return out[-limit:]


class FakeJobs:
    def __init__(self, *live: JobRecord) -> None:
        self.active = {j.id: j for j in live}
        self.array_parents: dict[int, JobRecord] = {}
        self.waited: list[int] = []

    def live(self, job_id: int) -> JobRecord | None:
        return self.active.get(job_id)

    def live_jobs(self) -> list[JobRecord]:
        return list(self.active.values())

    def task_count(self) -> int:
        return 3

    async def wait_final(self, job_ids: Iterable[int], timeout: float | None) -> None:
        self.waited = list(job_ids)


@dataclasses.dataclass
class Timings:
    passes: int = 4
    last_pass_s: float = 0.1
    max_pass_s: float = 0.2
    total_pass_s: float = 0.3
    max_plan_s: float = 0.4
    total_plan_s: float = 0.5


class FakeLink:
    def __init__(self, connected: bool, reply: dict[str, Any] | Exception) -> None:
        self.connected = connected
        self.last_error = None if connected else "connection refused"
        self.reply = reply
        self.asked: dict[str, Any] = {}

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        self.asked = {"op": op, **fields}
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Cluster:
    for var in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(var, "alice")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return Cluster(load_inventory(EXAMPLE))


class FakePool:
    """HostPool's two calls the read model makes, over FakeLinks keyed by host."""

    def __init__(self, links: dict[str, FakeLink]) -> None:
        self.links = links

    def connected_count(self) -> int:
        return sum(1 for link in self.links.values() if link.connected)

    async def request(self, host: str, op: str, **fields: Any) -> dict[str, Any]:
        link = self.links.get(host)
        if link is None or not link.connected:
            raise HostUnavailable(f"host {host} is not connected: {link and link.last_error}")
        return await link.request(op, **fields)


def model(cluster: Cluster, store: FakeStore, jobs: FakeJobs, **links: FakeLink) -> ReadModel:
    reads = HostReads(FakePool(links))  # type: ignore[arg-type]
    return ReadModel(store, jobs, cluster, Timings(), reads)


async def test_a_live_job_is_shown_with_its_pending_reason_from_memory(cluster: Cluster) -> None:
    store = FakeStore(job(1, JobState.RUNNABLE, "stored reason"))
    jobs = FakeJobs(job(1, JobState.RUNNABLE, "Resources"))
    shown = await model(cluster, store, jobs).show(1, ANN)
    assert shown["reason"] == "Resources" and shown["transitions"][0]["new"] == "SUBMITTED"
    with pytest.raises(ApiError, match="job 9 not found") as err:
        await model(cluster, store, jobs).show(9, ANN)
    assert err.value.kind == "not_found"


async def test_the_default_listing_is_memory_and_a_query_is_the_store(cluster: Cluster) -> None:
    store = FakeStore(job(1, JobState.SUCCEEDED), job(2, JobState.RUNNABLE, "old"))
    jobs = FakeJobs(job(3, JobState.RUNNING, user="bob"), job(2, JobState.RUNNABLE, "Priority"))
    jobs.array_parents[0] = job(0, JobState.PENDING, array_size=2)
    read = model(cluster, store, jobs)
    assert [s["id"] for s in await read.jobs(JobsArgs(), [], ROOT)] == [0, 2, 3]
    assert [s["id"] for s in await read.jobs(JobsArgs(user="bob"), [], ROOT)] == [3]
    assert store.queries == 0
    listed = await read.jobs(JobsArgs(all=True), [], ROOT)
    assert [(s["id"], s["reason"]) for s in listed] == [(1, None), (2, "Priority")]


async def test_wait_reads_final_jobs_once_and_keeps_the_order(cluster: Cluster) -> None:
    store = FakeStore(job(1, JobState.SUCCEEDED), job(2, JobState.RUNNING))
    jobs = FakeJobs(job(2, JobState.RUNNING))
    read = model(cluster, store, jobs)
    out = await read.wait([2, 1, 2], 5.0, ANN)
    assert [s["id"] for s in out] == [2, 1, 2] and jobs.waited == [2, 1, 2]
    with pytest.raises(ApiError, match="job 7 not found"):
        await read.wait([1, 7], None, ANN)
    assert jobs.waited == [2, 1, 2]  # refused before waiting


async def test_logs_read_through_the_host_or_say_why_not(cluster: Cluster) -> None:
    running = job(1, JobState.RUNNING, attempt=1, attempts=[attempt(1, "n1")])
    store = FakeStore(running, job(2, JobState.RUNNABLE))
    ok = FakeLink(True, {"data": "hi\n", "offset": 3, "done": False})
    read = model(cluster, store, FakeJobs(), n1=ok)
    args: dict[str, Any] = {"stream": "stdout", "node": 0, "attempt": None, "offset": 0, "limit": 9}
    chunk = await read.logs(1, ANN, **args)
    assert chunk == {"data": "hi\n", "offset": 3, "done": False, "state": "RUNNING", "host": "n1"}
    assert ok.asked == {"op": "read", "attempt": "1.1.0", "stream": "stdout", "offset": 0,
                        "limit": 9}  # fmt: skip
    assert (await read.logs(2, ANN, **args))["data"] == ""  # never started: nothing to read
    with pytest.raises(ApiError, match="stream must be stdout or stderr"):
        await read.logs(1, ANN, **{**args, "stream": "stdin"})
    with pytest.raises(ApiError, match="job 1 has no attempt 1 node 4"):
        await read.logs(1, ANN, **{**args, "node": 4})
    down = model(cluster, store, FakeJobs(), n1=FakeLink(False, {}))
    with pytest.raises(ApiError, match="host n1 is not connected: connection refused") as err:
        await down.logs(1, ANN, **args)
    assert err.value.kind == "unavailable"
    gone = model(cluster, store, FakeJobs(), n1=FakeLink(True, AgentError("x", "no_attempt")))
    assert (await gone.logs(1, ANN, **args))["data"] == ""
    # The code decides, not the words: an error that says "no attempt" but is not one.
    odd = AgentError("n1: read: no attempt at reading", "internal")
    with pytest.raises(ApiError, match="no attempt at reading"):
        await model(cluster, store, FakeJobs(), n1=FakeLink(True, odd)).logs(1, ANN, **args)
    fifo = AgentError("n1: read: x", "bad_path", "stdout /tmp/f is a FIFO, not a regular file")
    with pytest.raises(ApiError, match="n1: stdout /tmp/f is a FIFO") as err:
        await model(cluster, store, FakeJobs(), n1=FakeLink(True, fifo)).logs(1, ANN, **args)
    assert err.value.kind == "bad_request"
    lost = model(cluster, store, FakeJobs(), n1=FakeLink(True, HostUnavailable("n1: dropped")))
    with pytest.raises(ApiError, match="n1: dropped"):
        await lost.logs(1, ANN, **args)


async def test_stats_and_queues_count_live_jobs_from_memory(cluster: Cluster) -> None:
    jobs = FakeJobs(job(1, JobState.RUNNING), job(2, JobState.RUNNABLE))
    store = FakeStore()
    read = model(cluster, store, jobs, a=FakeLink(True, {}), b=FakeLink(False, {}))
    stats = read.stats()
    assert stats["jobs"] == {"RUNNING": 1, "RUNNABLE": 1} and stats["tasks"] == 3
    assert stats["links_connected"] == 1 and stats["scheduler"]["passes"] == 4
    assert sum(stats["hosts"].values()) == len(cluster.hosts)
    batch = next(q for q in read.queues() if q["name"] == "batch")
    assert batch["counts"] == {"RUNNING": 1, "RUNNABLE": 1} and batch["default"]
    assert store.queries == 0


async def test_another_users_job_is_its_public_row_and_its_output_is_refused(
    cluster: Cluster,
) -> None:
    secret = job(1, JobState.SUCCEEDED, exit_code=3, attempt=1, attempts=[attempt(1, "n1")])
    secret.request = {"script": "echo $API_TOKEN", "env": {"API_TOKEN": "s3cr3t"}}
    store = FakeStore(secret)
    jobs = FakeJobs(job(2, JobState.RUNNING, user="ann"))
    link = FakeLink(True, {"data": "s3cr3t\n", "offset": 7, "done": True})
    read = model(cluster, store, jobs, n1=link)
    for caller in (ANN, CAROL, ROOT):  # the owner, a listed admin, root: everything
        shown = await read.show(1, caller)
        assert shown["request"]["env"] == {"API_TOKEN": "s3cr3t"} and "private" not in shown
        assert (await read.logs(1, caller, stream="stdout", node=0, attempt=None, offset=0,
                                limit=9))["data"] == "s3cr3t\n"  # fmt: skip
    shown = await read.show(1, BOB)
    assert shown["private"] is True and "s3cr3t" not in repr(shown)
    assert set(shown) - {"private"} <= PUBLIC_FIELDS and shown["exit_code"] == 3
    assert (shown["id"], shown["user"], shown["state"]) == (1, "ann", "SUCCEEDED")
    with pytest.raises(ApiError, match="job 1 belongs to ann: only they or an admin") as err:
        await read.logs(1, BOB, stream="stdout", node=0, attempt=None, offset=0, limit=9)
    assert err.value.kind == "forbidden"
    for listed in (await read.jobs(JobsArgs(), [], BOB), await read.wait([1], None, BOB)):
        assert all(s["private"] and "definition" not in s for s in listed)
    assert "private" not in (await read.jobs(JobsArgs(all=True), [], ANN))[0]
    event = {"event": "job", "job": secret.summary()}
    assert read.event_for(event, ANN) is event
    assert read.event_for(event, BOB)["job"]["private"] is True
    assert read.event_for({"event": "host", "host": {}}, BOB) == {"event": "host", "host": {}}


async def test_tags_filter_finds_only_jobs_whose_tags_the_caller_sees(cluster: Cluster) -> None:
    tagged = {"script": "true", "tags": {"project": "x"}}
    mine = dataclasses.replace(job(1, JobState.RUNNABLE), request=tagged)
    theirs = dataclasses.replace(job(2, JobState.RUNNABLE, user="bob"), request=tagged)
    plain = job(3, JobState.RUNNABLE)
    read = model(cluster, FakeStore(), FakeJobs(mine, theirs, plain))
    want = JobsArgs(tags={"project": "x"})
    assert [s["id"] for s in await read.jobs(want, [], ANN)] == [1]
    assert [s["id"] for s in await read.jobs(want, [], ROOT)] == [1, 2]
    shown = await read.jobs(JobsArgs(), [], ANN)
    assert shown[0]["tags"] == {"project": "x"} and "tags" not in shown[1]  # bob's: public row
