"""The API's queries, in one place: jobs, show, wait, logs, queues, hosts, stats.

Why it exists: what a client sees of a job is the store's row merged with the
job service's memory. Active jobs are listed from memory (the store is their
mirror); final jobs are read from the store; and a pending job's reason (why
it waits: Resources, Priority, QueueDisabled...) lives only in memory, so a
stored row of a live job takes its reason from there. That merge is made here
and nowhere else. The read model changes nothing: it asks the job service
through its read methods (`LiveJobs`), the store through its queries, and the
hosts through `HostReads`.
"""

from __future__ import annotations

import resource
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from hpcbatch.controller.apiargs import AcctArgs, JobsArgs
from hpcbatch.controller.callers import ApiError, Caller
from hpcbatch.core import fairshare
from hpcbatch.core.records import AttemptRecord, JobRecord
from hpcbatch.core.states import JobState
from hpcbatch.core.usage import acct_rows
from hpcbatch.transport.pool import AgentError, HostUnavailable

if TYPE_CHECKING:
    from hpcbatch.controller.cluster import Cluster
    from hpcbatch.inventory import ResolvedInventory
    from hpcbatch.store.logs import CollectedLog, LogsTable
    from hpcbatch.store.rows import Transition
    from hpcbatch.store.steps import StepRow, StepsTable
    from hpcbatch.transport.agent.protocol import ReadReply
    from hpcbatch.transport.pool import HostPool

DEFAULT_LIMIT = 10_000
READ_LIMIT = 65536

PUBLIC_FIELDS = frozenset(
    (
        "id", "display_id", "name", "user", "queue", "state", "reason", "submitted",
        "started", "ended", "exit_code", "attempt", "nodes", "cpus", "memory_mb", "gpus",
        "time_limit_s", "hosts", "array_parent", "array_index", "array_size",
        "priority", "nice", "queue_priority", "share_factor",
    )
)  # fmt: skip
"""What every user sees of another user's job: its summary row, as squeue shows it
(the exit code too: a failed job's reason says it anyway, `exit code 3`). A list
of what may be shown, not of what to hide, so that a field added to the summary
later (a definition's name, an account) stays private until someone decides."""


def public_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Another user's job: the public fields of its summary, marked `private`."""
    out = {k: v for k, v in summary.items() if k in PUBLIC_FIELDS}
    out["private"] = True
    return out


def _tagged(jobs: list[JobRecord], tags: Mapping[str, Any] | None) -> list[JobRecord]:
    """The jobs that carry every one of `tags` (all of them when there are none)."""
    if not tags:
        return jobs
    want = tags.items()
    return [j for j in jobs if want <= (j.request.get("tags") or {}).items()]


def sees_all(caller: Caller, user: str) -> bool:
    """Whether `caller` sees all of a job of `user` (script, environment, output,
    errors): its owner and administrators do (Slurm's PrivateData=jobs)."""
    return caller.admin or caller.user == user


class StoredJobs(Protocol):
    """The store's job queries the read model uses (`Store.jobs`), and nothing more."""

    async def get_job(self, job_id: int) -> JobRecord | None: ...

    async def transitions(self, job_id: int) -> list[Transition]: ...

    async def list_jobs(
        self,
        *,
        states: Sequence[str] = (),
        user: str | None = None,
        queue: str | None = None,
        name: str | None = None,
        ids: Sequence[int] = (),
        array_parents: Sequence[int] = (),
        limit: int = DEFAULT_LIMIT,
    ) -> list[JobRecord]: ...

    async def acct_jobs(
        self,
        *,
        start: float | None = None,
        end: float | None = None,
        states: Sequence[str] = (),
        user: str | None = None,
        queue: str | None = None,
        name: str | None = None,
        ids: Sequence[int] = (),
        limit: int = 100_000,
    ) -> list[JobRecord]: ...


class LiveJobs(Protocol):
    """What the read model asks of the job service (`JobService`), and nothing more."""

    @property
    def array_parents(self) -> Mapping[int, JobRecord]: ...

    def live(self, job_id: int) -> JobRecord | None: ...

    def live_jobs(self) -> list[JobRecord]: ...

    def task_count(self) -> int: ...

    async def wait_final(self, job_ids: Iterable[int], timeout: float | None) -> None: ...


class PassTimings(Protocol):
    """The scheduler loop's counters (`SchedulerLoop`), for `stats`."""

    passes: int
    last_pass_s: float
    max_pass_s: float
    total_pass_s: float
    max_plan_s: float
    total_plan_s: float

    def share_usage(self) -> tuple[dict[str, float], dict[float, dict[str, float]]]: ...


def collected_chunk(kept: CollectedLog, offset: int, limit: int) -> dict[str, Any]:
    """A `logs` answer from the store's copy (the host is not asked)."""
    data = kept.text[offset : offset + limit]
    done = offset + len(data) >= len(kept.text)
    text = data.decode("utf-8", errors="replace")
    if done and kept.truncated:
        text += "\n[hpcbatch: the rest was not kept: the job's collected logs reached log_cap_mb]\n"
    return {"data": text, "offset": offset + len(data), "done": done, "collected": True}


class HostReads:
    """The one place the API reaches a host: how many links are up, and reading output."""

    def __init__(self, pool: HostPool) -> None:
        self._pool = pool

    def connected(self) -> int:
        return self._pool.connected_count()

    async def read(self, host: str, **request: Any) -> ReadReply:
        """The agent's reply to `read`; AgentError as the agent refused it; else unavailable."""
        try:
            return await self._pool.request(host, "read", **request)
        except HostUnavailable as exc:
            raise ApiError("unavailable", str(exc)) from None


class ReadModel:
    def __init__(
        self,
        store: StoredJobs,
        jobs: LiveJobs,
        cluster: Cluster,
        scheduler: PassTimings,
        hosts: HostReads,
        steps: StepsTable | None = None,
        logs: LogsTable | None = None,
    ) -> None:
        self._steps = steps
        self._logs = logs
        self._store = store
        self._jobs = jobs
        self._cluster = cluster
        self._scheduler = scheduler
        self._hosts = hosts

    @property
    def _inventory(self) -> ResolvedInventory:
        """The effective inventory now (it changes with live administration)."""
        return self._cluster.inventory

    # ------------------------------------------------------------------ the merge

    def _live(self, job_id: int) -> JobRecord | None:
        return self._jobs.live(job_id) or self._jobs.array_parents.get(job_id)

    def _merged(self, stored: JobRecord) -> JobRecord:
        live = self._live(stored.id)
        if live is not None:
            stored.reason = live.reason  # pending reasons live in memory
        return stored

    async def job(self, job_id: int) -> JobRecord:
        """A job as stored, with its live reason; not_found if there is none."""
        stored = await self._store.get_job(job_id)
        if stored is None:
            raise ApiError("not_found", f"job {job_id} not found")
        return self._merged(stored)

    async def _stored(self, ids: list[int]) -> dict[int, JobRecord]:
        """Jobs from the store by id, a few queries per 500 (not two per job: a `wait`
        on 1,000 jobs spent half a second in per-job reads)."""
        unique = sorted(set(ids))
        found: dict[int, JobRecord] = {}
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            for job in await self._store.list_jobs(ids=chunk, limit=len(chunk)):
                found[job.id] = job
        return found

    # ------------------------------------------------------------------ jobs

    def _summary(
        self,
        job: JobRecord,
        caller: Caller,
        factors: dict[tuple[str, str], float] | None = None,
    ) -> dict[str, Any]:
        summary = job.summary()
        if factors is not None:
            summary.update(self._priority(job, factors))
        return summary if sees_all(caller, job.user) else public_summary(summary)

    def event_for(self, event: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """A `watch` event as `caller` may see it: another user's job as its public row."""
        job = event.get("job") if event.get("event") == "job" else None
        if not isinstance(job, dict) or sees_all(caller, str(job.get("user"))):
            return event
        return {**event, "job": public_summary(job)}

    async def jobs(self, q: JobsArgs, states: list[str], caller: Caller) -> list[dict[str, Any]]:
        """Summaries: the live jobs (and arrays) when nothing narrows the listing to
        stored ones, else the store's rows, each replaced by its live record if any.
        Another user's jobs are shown as their public rows. `tags`: only jobs with
        all of them; `priority`: each active job's priority as the scheduler sees it."""
        ids = list(q.ids or [])
        parents = [q.array_parent] if q.array_parent is not None else []
        if not states and not ids and not parents and not q.all:
            found = [
                j
                for j in (*self._jobs.array_parents.values(), *self._jobs.live_jobs())
                if (q.user is None or j.user == q.user)
                and (q.queue is None or j.queue == q.queue)
                and (q.name is None or j.name == q.name)
            ]  # filtered before it is sorted: 50,000 live jobs sort in ~20 ms
            found.sort(key=lambda j: j.id)
        else:
            records = await self._store.list_jobs(
                states=states,
                user=q.user,
                queue=q.queue,
                name=q.name,
                ids=ids,
                array_parents=parents,
                limit=q.limit or DEFAULT_LIMIT,
            )
            found = [self._live(rec.id) or rec for rec in records]
        if q.tags:  # only jobs whose tags the caller may see (they are not public)
            found = [j for j in _tagged(found, q.tags) if sees_all(caller, j.user)]
        factors = self._share_factors() if q.priority else None
        return [self._summary(j, caller, factors) for j in found]

    def _share_factors(self) -> dict[tuple[str, str], float]:
        """(queue, share identifier) -> its fair-share factor now, as `shares` lists it."""
        return {(r["queue"], r["share_id"]): r["factor"] for r in self.shares(None)}

    def _priority(self, job: JobRecord, factors: dict[tuple[str, str], float]) -> dict[str, Any]:
        """What orders `job` among the others, as the scheduler reads it: its queue's
        priority first, then the job's priority (higher first) and nice (lower
        first), then, in a FAIRSHARE queue, its share identifier's factor (higher
        first). None for final jobs."""
        if job.state.is_final:
            return {"priority": None, "nice": None, "queue_priority": None, "share_factor": None}
        q = self._inventory.queues.get(job.queue)
        share = job.request.get("share_id") or job.user
        fair = q is not None and q.policy == "FAIRSHARE"
        return {
            "priority": job.request.get("priority", 0),
            "nice": job.request.get("nice", 0),
            "queue_priority": q.priority if q is not None else None,
            "share_factor": factors.get((job.queue, share), 1.0) if fair else None,
        }

    async def acct(
        self, q: AcctArgs, states: list[str], viewer: str | None
    ) -> list[dict[str, Any]]:
        """`acct`'s rows: the store's finished jobs in the window, then the live ones that
        started by its end. Per-node rows (where and what each node used) only of jobs
        `viewer` owns (None: an administrator, who sees all); the job rows are public."""
        found = await self._store.acct_jobs(
            start=q.start, end=q.end, states=states, user=q.user, queue=q.queue,
            name=q.name, ids=list(q.ids or []), limit=q.limit or 100_000,
        )  # fmt: skip
        live = [
            j
            for j in self._jobs.live_jobs()
            if j.started is not None
            and (q.end is None or j.started <= q.end)
            and (not states or str(j.state) in states)
            and (not q.ids or j.id in q.ids)
            and all(v is None or v == getattr(j, k) for k, v in self._who(q).items())
        ]
        jobs = [*found, *sorted(live, key=lambda j: j.id)]
        if q.tags:  # only jobs whose tags the viewer may see (they are not public)
            jobs = [j for j in _tagged(jobs, q.tags) if viewer is None or j.user == viewer]
        # Steps (their commands, where they ran) are shown as nodes are: to their owner.
        mine = [j.id for j in jobs if viewer is None or j.user == viewer]
        steps: dict[int, list[StepRow]] = {}
        for row in await self._steps.of_jobs(mine) if self._steps is not None and mine else []:
            steps.setdefault(row.job_id, []).append(row)
        rows: list[dict[str, Any]] = []
        for job in jobs:
            own = viewer is None or job.user == viewer
            rows += acct_rows([job], per_node=bool(q.per_node) and own, steps=steps)
        return rows

    @staticmethod
    def _who(q: AcctArgs) -> dict[str, str | None]:
        return {"user": q.user, "queue": q.queue, "name": q.name}

    async def show(self, job_id: int, caller: Caller) -> dict[str, Any]:
        """All of a job for its owner or an admin; the public row for anyone else."""
        job = await self.job(job_id)
        if not sees_all(caller, job.user):
            return public_summary(job.summary())
        transitions = await self._store.transitions(job.id)
        return {
            **job.summary(),
            "request": job.request,
            "transitions": [
                {"ts": t.ts, "old": t.old, "new": t.new, "reason": t.reason} for t in transitions
            ],
            "attempts": [self._with_live(a) for a in job.attempts],
            "steps": await self.steps(job.id),
        }

    def _with_live(self, a: AttemptRecord) -> dict[str, Any]:
        """An attempt as `show` gives it, with its node's live usage while it runs."""
        out = a.to_json()
        host = self._cluster.hosts.get(a.host)
        out["live"] = host.live.of(a.attempt_id) if host is not None else None
        return out

    async def steps(self, job_id: int) -> list[dict[str, Any]]:
        """The job's steps (each srun inside it), oldest first."""
        if self._steps is None:
            return []
        return [s.to_json() for s in await self._steps.of_job(job_id)]

    async def wait(
        self, ids: list[int], timeout: float | None, caller: Caller
    ) -> list[dict[str, Any]]:
        """The jobs' summaries once all are final, in the order asked (repeats kept)."""
        # Jobs not live are final already: read once, before waiting, and kept.
        gone = [job_id for job_id in ids if self._live(job_id) is None]
        stored = await self._stored(gone)
        for job_id in gone:
            if job_id not in stored:
                raise ApiError("not_found", f"job {job_id} not found")
        await self._jobs.wait_final(ids, timeout)
        stored.update(await self._stored([i for i in ids if i not in stored]))
        out = []
        for job_id in ids:
            job = stored.get(job_id)
            if job is None:
                raise ApiError("not_found", f"job {job_id} not found")
            out.append(self._summary(self._merged(job), caller))
        return out

    # ------------------------------------------------------------------ logs

    async def logs(
        self,
        job_id: int,
        caller: Caller,
        *,
        stream: str,
        node: int,
        attempt: int | None,
        offset: int,
        limit: int,
    ) -> dict[str, Any]:
        """A chunk of one node's output of one attempt (the latest unless named);
        refused to anyone but the job's owner and administrators."""
        job = await self.job(job_id)
        if not sees_all(caller, job.user):
            raise ApiError(
                "forbidden",
                f"job {job.display_id} belongs to {job.user}: only they or an "
                "administrator may read its output",
            )
        if not job.attempts:
            return self._no_output(job)
        number = attempt or job.attempt
        rec = next((a for a in job.attempts if a.attempt == number and a.node == node), None)
        if rec is None:
            raise ApiError("not_found", f"job {job.id} has no attempt {number} node {node}")
        if stream not in ("stdout", "stderr"):
            raise ApiError("bad_request", "stream must be stdout or stderr")
        if self._logs is not None and job.state in (JobState.SUCCEEDED, JobState.FAILED):
            kept = await self._logs.get(job.id, rec.attempt, node, stream)
            if kept is None and stream == "stderr" and rec.stderr == rec.stdout:
                kept = await self._logs.get(job.id, rec.attempt, node, "stdout")
            if kept is not None:
                chunk = collected_chunk(kept, offset, limit)
                return {**chunk, "state": str(job.state), "host": rec.host}
        return await self._read(job, rec, stream, offset, limit)

    async def _read(
        self, job: JobRecord, rec: AttemptRecord, stream: str, offset: int, limit: int
    ) -> dict[str, Any]:
        try:
            reply = await self._hosts.read(
                rec.host, attempt=rec.attempt_id, stream=stream, offset=offset, limit=limit
            )
        except AgentError as exc:
            if exc.code == "no_attempt":
                return self._no_output(job)
            if exc.code == "bad_path":  # e.g. the output is a FIFO: say what it is
                raise ApiError("bad_request", f"{rec.host}: {exc.message}") from None
            raise ApiError("unavailable", str(exc)) from None
        return {
            "data": reply.get("data", ""),
            "offset": reply.get("offset", 0),
            "done": bool(reply.get("done")),
            "state": str(job.state),
            "host": rec.host,
        }

    @staticmethod
    def _no_output(job: JobRecord) -> dict[str, Any]:
        return {"data": "", "offset": 0, "done": job.state.is_final, "state": str(job.state)}

    # ------------------------------------------------------------------ cluster

    def has_host(self, name: str | None) -> bool:
        return name in self._cluster.hosts

    def has_queue(self, name: str | None) -> bool:
        return name in self._inventory.queues

    def hosts(self) -> list[dict[str, Any]]:
        return [h.summary() for h in self._cluster.hosts.values()]

    def queues(self) -> list[dict[str, Any]]:
        counts: dict[str, dict[str, int]] = {}
        for job in self._jobs.live_jobs():
            per = counts.setdefault(job.queue, {})
            per[str(job.state)] = per.get(str(job.state), 0) + 1
        return [
            {
                "name": name,
                "priority": q.priority,
                "state": "ENABLED" if self._cluster.queue_enabled.get(name, True) else "DISABLED",
                "compute_environments": list(q.compute_environments),
                "hosts": list(self._cluster.queue_hosts(name)),
                "default": name == self._inventory.default_queue,
                "tags": dict(q.tags),
                "counts": counts.get(name, {}),
            }
            for name, q in self._inventory.queues.items()
        ]

    def shares(self, queue: str | None) -> list[dict[str, Any]]:
        """Each fair-share queue's identifiers: weight, decayed usage, factor, jobs."""
        usage, by_half_life = self._scheduler.share_usage()
        jobs: dict[tuple[str, str], Counter[str]] = {}
        for job in self._jobs.live_jobs():
            key = (job.queue, job.spec.share_id or job.user)
            jobs.setdefault(key, Counter())[str(job.state)] += 1
        out: list[dict[str, Any]] = []
        for name, q in self._inventory.queues.items():
            if q.policy != "FAIRSHARE" or (queue is not None and name != queue):
                continue
            h = q.share_decay_half_life_s
            used = usage if h is None else by_half_life.get(h, usage)
            ids = [s for (qn, s) in jobs if qn == name]
            for row in fairshare.share_rows(used, q.shares, ids):
                counts = jobs.get((name, row.share_id), Counter())
                out.append({"queue": name, **row.as_dict(), "jobs": dict(counts)})
        return out

    def stats(self) -> dict[str, Any]:
        """Counts for watching a running controller at scale, from memory only (no SQL,
        cheap enough to poll): hosts and active jobs by state, scheduler pass timings,
        links up, background tasks, CPU time. `hosts` and `jobs` replies are megabytes
        at thousands of hosts; a monitor polling every fraction of a second needs this."""
        sched = self._scheduler
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "hosts": dict(Counter(str(h.state) for h in self._cluster.hosts.values())),
            "links_connected": self._hosts.connected(),
            "jobs": dict(Counter(str(j.state) for j in self._jobs.live_jobs())),
            "array_parents": len(self._jobs.array_parents),
            "scheduler": {
                "passes": sched.passes,
                "last_pass_s": sched.last_pass_s,
                "max_pass_s": sched.max_pass_s,
                "total_pass_s": sched.total_pass_s,
                "max_plan_s": sched.max_plan_s,
                "total_plan_s": sched.total_plan_s,
            },
            "tasks": self._jobs.task_count(),
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_rss_kb": usage.ru_maxrss,
        }
