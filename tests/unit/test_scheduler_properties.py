"""Property-based tests of the full scheduling pass on generated clusters.

Generated: hosts (some with GPUs, fabric islands, some down, some held whole),
running allocations consistent with what the hosts report in use (with start
times and limits, some overdue, some unlimited, some use no running job
explains), compute environments with caps, queues with priorities, policies,
limits and default time limits, and jobs of several users with time limits and
array throttles. Checked on every plan:

* nothing is over-committed (CPUs, memory, GPUs), no GPU is given twice, whole
  hosts are idle and not shared, jobs run only on their queue's enabled
  compute environments, within vCPU caps;
* queue limits and throttles hold; every job is started or has a known reason;
* queue priority: no lower-priority job takes what an equal waiting job of a
  higher-priority queue needed; FIFO within a FIFO queue (modulo backfill);
* backfill never delays the reservation: recomputing the reserved job's
  earliest start by brute force, with every start of the plan in place, gives
  exactly the reserved time.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbatch.core.records import Placement
from hpcbatch.core.scheduler import (
    ComputeEnvView,
    HostView,
    JobView,
    Plan,
    QueuePolicy,
    QueueView,
    RunningView,
    schedule,
)

NOW = 1000.0
CODES = (
    "Resources:",
    "Reservation:",
    "QueueDisabled:",
    "QueueUnknown:",
    "QueueLimit:",
    "ComputeEnvDisabled:",
    "ComputeEnvLimit:",
    "Throttle:",
)
USERS = ("ann", "bob", "cy")
GROUPS = (None, None, "g1", "g2")


@dataclass
class Snapshot:
    hosts: list[HostView]
    queues: list[QueueView]
    ces: list[ComputeEnvView]
    running: list[RunningView]
    jobs: list[JobView]
    usage: dict[str, float]

    def plan(self) -> Plan:
        return schedule(
            self.hosts,
            self.queues,
            self.jobs,
            now=NOW,
            running=self.running,
            compute_envs=self.ces,
            usage=self.usage,
        )


@st.composite
def snapshots(draw: st.DrawFn, busy: bool = False) -> Snapshot:
    """A snapshot; `busy`: no queue limits, throttles or disabled queues, every host
    up and partly used by jobs with known ends, so reservations and backfill are common."""
    queue_names = [f"q{i}" for i in range(draw(st.integers(1, 3)))]
    hosts: list[HostView] = []
    running: list[RunningView] = []
    next_id = 1000
    limits = st.sampled_from([None, 30.0, 100.0, 300.0, 2000.0])

    def start_and_limit() -> tuple[float, float | None]:
        return draw(st.sampled_from([NOW - 500, NOW - 100, NOW - 10, NOW])), draw(limits)

    for i in range(draw(st.integers(1, 10))):
        name = f"h{i}"
        cpus = draw(st.sampled_from([2, 4, 8, 16]))
        mem = draw(st.sampled_from([4000, 16_000, 64_000]))
        gpus = tuple(range(draw(st.sampled_from([0, 0, 2, 4]))))
        fabric = draw(st.sampled_from(["ia", "ia", "ib", None]))
        available = busy or draw(st.integers(0, 7)) > 0
        why = None if available else f"{name} down"
        kinds = ["idle", "shared", "shared", "whole"] if busy else ["idle", "idle", "opaque"]
        kind = draw(st.sampled_from([*kinds, "shared", "shared", "shared", "whole"]))
        used_c = used_m = 0
        used_g: set[int] = set()
        exclusive = False
        if kind == "whole":
            exclusive = True
            used_c, used_m, used_g = cpus, mem, set(gpus)
            if draw(st.booleans()):  # else: nothing explains it: held for ever, as far as known
                start, limit = start_and_limit()
                p = Placement(name, cpus, mem, gpus, exclusive=True)
                running.append(
                    RunningView(next_id, draw(st.sampled_from(queue_names)), (p,), start, limit)
                )
                next_id += 1
        elif kind in ("shared", "opaque"):
            for _ in range(draw(st.integers(1, 3))):
                c = draw(st.integers(0, (cpus - used_c) // 2))
                m = draw(st.integers(0, mem - used_m))
                free_g = [g for g in gpus if g not in used_g]
                g = tuple(free_g[: draw(st.integers(0, len(free_g)))])
                used_c, used_m = used_c + c, used_m + m
                used_g |= set(g)
                if kind == "shared":
                    start, limit = start_and_limit()
                    running.append(
                        RunningView(
                            next_id,
                            draw(st.sampled_from(queue_names)),
                            (Placement(name, c, m, g),),
                            start,
                            limit,
                            draw(st.sampled_from(USERS)),
                            draw(st.sampled_from(GROUPS)),
                            draw(st.sampled_from([None, "ce0", "ce1"])),
                        )
                    )
                    next_id += 1
        hosts.append(
            HostView(
                name, cpus, mem, gpus, fabric, available, why, used_c, used_m,
                frozenset(used_g), exclusive,
            )
        )  # fmt: skip
    names = [h.name for h in hosts]
    ces = [
        ComputeEnvView(
            f"ce{i}",
            tuple(draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names) + 1))),
            enabled=draw(st.integers(0, 5)) > 0,
            max_vcpus=draw(st.sampled_from([None, None, 8, 24, 64])),
        )
        for i in range(draw(st.integers(0, 2)))
    ]
    queues = []
    for qn in queue_names:
        use_ces = bool(ces) and draw(st.booleans())
        queues.append(
            QueueView(
                qn,
                draw(st.integers(0, 3)),
                () if use_ces else tuple(draw(st.permutations(names))[: draw(st.integers(1, 8))]),
                enabled=busy or draw(st.integers(0, 9)) > 0,
                compute_envs=tuple(draw(st.permutations([c.name for c in ces]))) if use_ces else (),
                policy=draw(st.sampled_from(list(QueuePolicy))),
                max_running=None if busy else draw(st.sampled_from([None, None, None, 3, 8])),
                max_vcpus=None if busy else draw(st.sampled_from([None, None, None, 12, 40])),
                default_time_limit_s=draw(st.sampled_from([None, 50.0, 500.0])),
            )
        )
    shapes = draw(
        st.lists(
            st.tuples(
                st.sampled_from([1, 1, 2, 4, 8]),
                st.sampled_from([0, 0, 1000, 8000]),
                st.sampled_from([0, 0, 0, 1, 2]),
                st.sampled_from([1, 1, 1, 2, 3]),
                st.integers(0, 5).map(lambda n: n == 5),
                st.sampled_from([None, None, "efa"]),
            ),
            min_size=1,
            max_size=6,
        )
    )
    jobs = []
    for i in range(draw(st.integers(1, 30))):
        cpus, mem, gpus, nodes, exclusive, fabric = draw(st.sampled_from(shapes))
        group = None if busy else draw(st.sampled_from(GROUPS))
        jobs.append(
            JobView(
                i + 1,
                draw(st.sampled_from(queue_names if busy else [*queue_names] * 4 + ["nope"])),
                cpus, mem, gpus, nodes, exclusive, fabric,
                user=draw(st.sampled_from(USERS)),
                time_limit_s=draw(st.sampled_from([None, 20.0, 100.0, 1000.0])),
                throttle_group=group,
                throttle_limit=None if group is None else (1 if group == "g1" else 3),
            )
        )  # fmt: skip
    usage = {u: draw(st.sampled_from([0.0, 10.0, 1e4])) for u in USERS}
    return Snapshot(hosts, queues, ces, running, jobs, usage)


# --------------------------------------------------------------------------- helpers


def queue_pools(s: Snapshot, q: QueueView) -> list[tuple[str | None, list[str]]]:
    """The (CE name, hosts) a queue's jobs may use, enabled only, in order."""
    if not q.compute_envs:
        return [(None, list(dict.fromkeys(q.hosts)))]
    by_name = {c.name: c for c in s.ces}
    return [
        (n, list(dict.fromkeys(by_name[n].hosts)))
        for n in q.compute_envs
        if n in by_name and by_name[n].enabled
    ]


def limit_of(limit: float | None, q: QueueView | None) -> float | None:
    if limit:
        return limit
    return q.default_time_limit_s if q is not None and q.default_time_limit_s else None


def end_of(start: float, limit: float | None) -> float:
    return math.inf if limit is None else max(start + limit, NOW)


@dataclass
class Alloc:
    host: str
    cpus: int
    mem: int
    gpus: int
    exclusive: bool
    end: float  # when it is given back (inf: never, as far as known)


def allocations(s: Snapshot, plan: Plan) -> list[Alloc]:
    """Everything held, now and by the plan, with its expected end."""
    qv = {q.name: q for q in s.queues}
    jv = {j.id: j for j in s.jobs}
    out: list[Alloc] = []
    explained: Counter[tuple[str, str]] = Counter()
    excl_known: set[str] = set()
    for r in s.running:
        end = end_of(r.start, limit_of(r.time_limit_s, qv.get(r.queue)))
        for p in r.placements:
            out.append(Alloc(p.host, p.cpus, p.memory_mb, len(p.gpus), p.exclusive, end))
            explained[(p.host, "c")] += p.cpus
            explained[(p.host, "m")] += p.memory_mb
            explained[(p.host, "g")] += len(p.gpus)
            if p.exclusive:
                excl_known.add(p.host)
    for h in s.hosts:  # what no running job explains is held for ever
        c = h.used_cpus - explained[(h.name, "c")]
        m = h.used_memory_mb - explained[(h.name, "m")]
        g = len(h.used_gpus) - explained[(h.name, "g")]
        if c > 0 or m > 0 or g > 0 or (h.exclusive and h.name not in excl_known):
            out.append(Alloc(h.name, max(c, 0), max(m, 0), max(g, 0), h.exclusive, math.inf))
    for job_id, placed in plan.starts:
        job = jv[job_id]
        end = end_of(NOW, limit_of(job.time_limit_s, qv[job.queue]))
        for p in placed:
            out.append(Alloc(p.host, p.cpus, p.memory_mb, len(p.gpus), p.exclusive, end))
    return out


def earliest(s: Snapshot, job: JobView, allocs: Sequence[Alloc]) -> float:
    """Brute force: the first time `job` fits on its queue's enabled pools."""
    hv = {h.name: h for h in s.hosts}
    q = {q.name: q for q in s.queues}[job.queue]
    times = sorted({NOW, *(a.end for a in allocs if a.end < math.inf)})
    for t in times:
        active = [a for a in allocs if a.end > t]
        free: dict[str, list[int]] = {
            n: [h.cpus, h.memory_mb, len(h.gpus), 1] for n, h in hv.items()
        }
        for a in active:
            f = free[a.host]
            f[0] -= a.cpus
            f[1] -= a.mem
            f[2] -= a.gpus
            if a.exclusive:
                f[3] = 0
        for _, members in queue_pools(s, q):
            ok = [
                n
                for n in members
                if hv[n].available
                and free[n][3]
                and (
                    free[n][:3] == [hv[n].cpus, hv[n].memory_mb, len(hv[n].gpus)]
                    if job.whole_hosts
                    else True
                )
                and free[n][0] >= job.cpus
                and free[n][1] >= job.memory_mb
                and free[n][2] >= job.gpus
            ]
            if not job.whole_hosts and ok:
                return t
            if job.whole_hosts:
                if job.fabric:
                    islands = Counter(hv[n].fabric for n in ok if hv[n].fabric is not None)
                    if any(k >= job.nodes for k in islands.values()):
                        return t
                elif len(ok) >= job.nodes:
                    return t
    return math.inf


# --------------------------------------------------------------------------- the properties


def check_resources(s: Snapshot, plan: Plan) -> None:
    hv = {h.name: h for h in s.hosts}
    qv = {q.name: q for q in s.queues}
    jv = {j.id: j for j in s.jobs}
    ids = [j for j, _ in plan.starts]
    assert len(ids) == len(set(ids))
    assert not set(ids) & set(plan.reasons)
    assert set(ids) | set(plan.reasons) == set(jv)
    for reason in plan.reasons.values():
        assert reason.startswith(CODES), reason
    cpus = {n: h.used_cpus for n, h in hv.items()}
    mem = {n: h.used_memory_mb for n, h in hv.items()}
    gpus = {n: set(h.used_gpus) for n, h in hv.items()}
    tenants: Counter[str] = Counter()
    whole: set[str] = set()
    for job_id, placed in plan.starts:
        job = jv[job_id]
        q = qv[job.queue]
        assert q.enabled
        pools = queue_pools(s, q)
        ce = plan.compute_envs.get(job_id)
        assert (ce is None) == (not q.compute_envs)
        members = dict(pools)[ce] if ce is not None else pools[0][1]
        assert len(placed) == (job.nodes if job.whole_hosts else 1)
        assert len({p.host for p in placed}) == len(placed)
        if job.fabric and job.whole_hosts:
            fabrics = {hv[p.host].fabric for p in placed}
            assert len(fabrics) == 1 and None not in fabrics
        for p in placed:
            h = hv[p.host]
            assert p.host in members, f"job {job_id} on {p.host}, not in its pool {ce}"
            assert h.available and not h.exclusive
            assert len(p.gpus) == job.gpus
            for g in p.gpus:
                assert g in h.gpus and g not in gpus[p.host], f"GPU {g} on {p.host} twice"
                gpus[p.host].add(g)
            if job.whole_hosts:
                assert h.idle and p.exclusive
                whole.add(p.host)
            cpus[p.host] += p.cpus
            mem[p.host] += p.memory_mb
            tenants[p.host] += 1
    for n, h in hv.items():
        assert cpus[n] <= h.cpus, f"CPUs over-committed on {n}"
        assert mem[n] <= h.memory_mb, f"memory over-committed on {n}"
    for n in whole:
        assert tenants[n] == 1


def check_limits(s: Snapshot, plan: Plan) -> None:
    jv = {j.id: j for j in s.jobs}
    qv = {q.name: q for q in s.queues}
    running_q = Counter(r.queue for r in s.running)
    vcpus_q = Counter({q: 0 for q in qv})
    for r in s.running:
        vcpus_q[r.queue] += sum(p.cpus for p in r.placements)
    group_running = Counter(r.throttle_group for r in s.running if r.throttle_group)
    ce_used = Counter({c.name: 0 for c in s.ces})
    for r in s.running:
        if r.compute_env:
            ce_used[r.compute_env] += sum(p.cpus for p in r.placements)
    ce_before = dict(ce_used)
    q_before = dict(vcpus_q)
    started_q: Counter[str] = Counter()
    started_g: Counter[str] = Counter()
    for job_id, placed in plan.starts:
        job = jv[job_id]
        started_q[job.queue] += 1
        vcpus_q[job.queue] += sum(p.cpus for p in placed)
        if job.throttle_group:
            started_g[job.throttle_group] += 1
            assert job.throttle_limit is not None
            total = group_running[job.throttle_group] + started_g[job.throttle_group]
            assert total <= job.throttle_limit, f"throttle {job.throttle_group} broken"
        ce = plan.compute_envs.get(job_id)
        if ce is not None:
            ce_used[ce] += sum(p.cpus for p in placed)
    for name, q in qv.items():
        if q.max_running is not None and started_q[name]:
            assert running_q[name] + started_q[name] <= q.max_running
        if q.max_vcpus is not None and started_q[name]:
            assert vcpus_q[name] <= max(q.max_vcpus, q_before[name])
    for c in s.ces:
        if c.max_vcpus is not None and ce_used[c.name] > ce_before[c.name]:
            assert ce_used[c.name] <= c.max_vcpus, f"CE {c.name} over its cap"


def check_priority(s: Snapshot, plan: Plan) -> None:
    """A waiting job (Resources) of a higher queue: no lower job took what it needed."""
    qv = {q.name: q for q in s.queues}
    started = dict(plan.starts)
    shape = lambda j: (j.cpus, j.memory_mb, j.gpus, j.nodes, j.exclusive, j.fabric)  # noqa: E731
    for high in s.jobs:
        reason = plan.reasons.get(high.id, "")
        if not reason.startswith("Resources:") or high.queue not in qv:
            continue
        uncapped = {
            n
            for ce, members in queue_pools(s, qv[high.queue])
            if ce is None or next(c for c in s.ces if c.name == ce).max_vcpus is None
            for n in members
        }
        for low in s.jobs:
            if low.id not in started or qv[low.queue].priority >= qv[high.queue].priority:
                continue
            used = {p.host for p in started[low.id]}
            assert not (shape(low) == shape(high) and used <= uncapped), (
                f"job {low.id} ({low.queue}) took {sorted(used)} while equal job {high.id} "
                f"of higher queue {high.queue} waits: {reason}"
            )


def check_fifo(s: Snapshot, plan: Plan) -> None:
    """In a FIFO queue, a later equal job (same shape, limit, group) never overtakes."""
    qv = {q.name: q for q in s.queues}
    started = dict(plan.starts)
    for i, a in enumerate(s.jobs):
        if a.queue not in qv or qv[a.queue].policy != QueuePolicy.FIFO or a.id in started:
            continue
        for b in s.jobs[i + 1 :]:
            same = (a.shape(), a.time_limit_s, a.throttle_group) == (
                b.shape(),
                b.time_limit_s,
                b.throttle_group,
            )
            assert not (same and b.id in started), f"job {b.id} overtook equal job {a.id}"


def check_backfill(s: Snapshot, plan: Plan) -> None:
    assert len(plan.reservations) <= 1
    jv = {j.id: j for j in s.jobs}
    for r in plan.reservations:
        job = jv[r.job_id]
        assert r.job_id in plan.reasons and r.job_id not in dict(plan.starts)
        assert plan.reasons[r.job_id].startswith("Resources:")
        assert "reserved: expected to start" in plan.reasons[r.job_id]
        assert r.start >= NOW
        got = earliest(s, job, allocations(s, plan))
        assert got == r.start, (
            f"job {r.job_id} was promised {r.start}; with the plan's starts it can start at {got}"
        )


@settings(max_examples=400, deadline=None)
@given(snapshots() | snapshots(busy=True))
def test_scheduling_pass_properties(s: Snapshot) -> None:
    before = copy.deepcopy(s)
    plan = s.plan()
    assert s == before, "schedule changed its inputs"
    again = s.plan()
    assert (again.starts, again.reasons, again.reservations) == (
        plan.starts,
        plan.reasons,
        plan.reservations,
    )
    check_resources(s, plan)
    check_limits(s, plan)
    check_priority(s, plan)
    check_fifo(s, plan)
    check_backfill(s, plan)
