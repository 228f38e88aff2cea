"""Tests for hpcbatch.core.scheduler: examples on tiny clusters, then properties."""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbatch.core.records import Placement
from hpcbatch.core.scheduler import (
    STEP,
    HostView,
    JobView,
    Plan,
    QueueView,
    infeasible,
    schedule,
    schedule_in_steps,
)

# --------------------------------------------------------------------------- helpers


def host(name: str, cpus: int = 8, memory_mb: int = 16_000, **kw: object) -> HostView:
    return HostView(name=name, cpus=cpus, memory_mb=memory_mb, **kw)  # type: ignore[arg-type]


def queue(name: str, hosts: Sequence[str], priority: int = 1, enabled: bool = True) -> QueueView:
    return QueueView(name=name, priority=priority, hosts=tuple(hosts), enabled=enabled)


def starts(plan: Plan) -> dict[int, tuple[Placement, ...]]:
    return dict(plan.starts)


def hosts_of(plan: Plan, job_id: int) -> list[str]:
    return [p.host for p in starts(plan)[job_id]]


# --------------------------------------------------------------------------- FIFO and queues


def test_fifo_within_a_queue() -> None:
    plan = schedule(
        [host("h1", cpus=4)],
        [queue("q", ["h1"])],
        [JobView(id=i, queue="q", cpus=2) for i in (1, 2, 3)],
    )
    assert [job_id for job_id, _ in plan.starts] == [1, 2]
    assert set(plan.reasons) == {3}
    assert plan.reasons[3].startswith("Resources:")


def test_fifo_order_is_the_order_given_not_the_id() -> None:
    plan = schedule(
        [host("h1", cpus=2)],
        [queue("q", ["h1"])],
        [JobView(id=9, queue="q", cpus=2), JobView(id=1, queue="q", cpus=2)],
    )
    assert [job_id for job_id, _ in plan.starts] == [9]
    assert set(plan.reasons) == {1}


def test_a_job_that_waits_does_not_block_a_smaller_later_one() -> None:
    plan = schedule(
        [host("h1", cpus=4)],
        [queue("q", ["h1"])],
        [JobView(id=1, queue="q", cpus=8), JobView(id=2, queue="q", cpus=1)],
    )
    assert set(starts(plan)) == {2}
    assert set(plan.reasons) == {1}


def test_higher_priority_queue_is_served_first() -> None:
    plan = schedule(
        [host("h1", cpus=4)],
        # The low-priority queue is listed first, and its job comes first too.
        [queue("low", ["h1"], priority=1), queue("high", ["h1"], priority=10)],
        [JobView(id=1, queue="low", cpus=4), JobView(id=2, queue="high", cpus=4)],
    )
    assert set(starts(plan)) == {2}
    assert set(plan.reasons) == {1}
    assert "4 CPUs" in plan.reasons[1]


def test_disabled_queue_gives_queue_disabled_reason() -> None:
    plan = schedule(
        [host("h1", cpus=64)],
        [queue("off", ["h1"], enabled=False), queue("on", ["h1"])],
        [JobView(id=1, queue="off"), JobView(id=2, queue="off"), JobView(id=3, queue="on")],
    )
    assert set(starts(plan)) == {3}
    for job_id in (1, 2):
        assert plan.reasons[job_id].startswith("QueueDisabled:")
        assert "off" in plan.reasons[job_id]


def test_job_in_unknown_queue_gets_queue_unknown_reason() -> None:
    plan = schedule([host("h1")], [queue("q", ["h1"])], [JobView(id=1, queue="nope")])
    assert plan.starts == []
    assert plan.reasons[1].startswith("QueueUnknown:")
    assert "nope" in plan.reasons[1]


def test_queue_hosts_not_in_the_snapshot_are_ignored() -> None:
    plan = schedule([host("h1", cpus=2)], [queue("q", ["ghost", "h1"])], [JobView(id=1, queue="q")])
    assert hosts_of(plan, 1) == ["h1"]


def test_a_job_only_runs_on_its_queues_hosts() -> None:
    plan = schedule(
        [host("small", cpus=1), host("big", cpus=64)],
        [queue("q", ["small"])],
        [JobView(id=1, queue="q", cpus=1), JobView(id=2, queue="q", cpus=1)],
    )
    assert hosts_of(plan, 1) == ["small"]
    assert set(plan.reasons) == {2}


def test_empty_inputs() -> None:
    plan = schedule([], [], [])
    assert plan.starts == []
    assert plan.reasons == {}


# --------------------------------------------------------------------------- single-node packing


def test_single_node_packing_is_best_fit() -> None:
    idle = host("idle", cpus=8)
    partly = host("partly", cpus=8, used_cpus=6, used_memory_mb=1000)
    plan = schedule(
        [idle, partly],
        [queue("q", ["idle", "partly"])],  # the idle host comes first: not first-fit
        [JobView(id=1, queue="q", cpus=1)],
    )
    assert hosts_of(plan, 1) == ["partly"]
    assert starts(plan)[1] == (Placement("partly", 1, 0, (), cores=(0,)),)


def test_best_fit_keeps_an_idle_host_for_a_whole_host_job() -> None:
    plan = schedule(
        [host("idle", cpus=8), host("partly", cpus=8, used_cpus=4)],
        [queue("q", ["idle", "partly"])],
        [JobView(id=1, queue="q", cpus=2), JobView(id=2, queue="q", cpus=1, exclusive=True)],
    )
    assert hosts_of(plan, 1) == ["partly"]
    assert hosts_of(plan, 2) == ["idle"]
    (whole,) = starts(plan)[2]
    assert whole.exclusive
    assert (whole.cpus, whole.memory_mb) == (8, 16_000)


def test_cpu_only_job_avoids_gpu_host_when_it_can() -> None:
    plan = schedule(
        [host("gpu", cpus=8, gpus=(0, 1)), host("cpu", cpus=16)],
        [queue("q", ["gpu", "cpu"])],
        [JobView(id=1, queue="q", cpus=1)],
    )
    assert hosts_of(plan, 1) == ["cpu"]


def test_memory_is_respected() -> None:
    plan = schedule(
        [host("h1", cpus=8, memory_mb=4000, used_memory_mb=3000)],
        [queue("q", ["h1"])],
        [JobView(id=1, queue="q", memory_mb=2000), JobView(id=2, queue="q", memory_mb=1000)],
    )
    assert set(starts(plan)) == {2}
    assert "2000 MB" in plan.reasons[1]


# --------------------------------------------------------------------------- GPUs


def test_gpus_assigned_by_index_never_twice() -> None:
    plan = schedule(
        [host("g", cpus=16, gpus=(0, 1, 2, 3), used_gpus=frozenset({1}), used_cpus=1)],
        [queue("q", ["g"])],
        [
            JobView(id=1, queue="q", gpus=2),
            JobView(id=2, queue="q", gpus=1),
            JobView(id=3, queue="q", gpus=1),
        ],
    )
    got = starts(plan)
    assert got[1][0].gpus == (0, 2)
    assert got[2][0].gpus == (3,)
    assert set(plan.reasons) == {3}
    assert "1 GPU" in plan.reasons[3]
    assert "0 GPUs on g" in plan.reasons[3]


def test_gpu_indices_need_not_be_contiguous() -> None:
    plan = schedule(
        [host("g", gpus=(2, 5, 7), used_gpus=frozenset({5}))],
        [queue("q", ["g"])],
        [JobView(id=1, queue="q", gpus=2)],
    )
    assert starts(plan)[1][0].gpus == (2, 7)


def test_gpu_job_waits_for_a_gpu_host() -> None:
    plan = schedule(
        [host("cpu", cpus=64)],
        [queue("q", ["cpu"])],
        [JobView(id=1, queue="q", gpus=1)],
    )
    assert plan.starts == []
    assert "1 GPU" in plan.reasons[1]


# --------------------------------------------------------------------------- availability


def test_unavailable_hosts_are_skipped() -> None:
    plan = schedule(
        [
            host("down", cpus=64, available=False, unavailable_reason="down down"),
            host("up", cpus=4),
        ],
        [queue("q", ["down", "up"])],
        [JobView(id=1, queue="q", cpus=2), JobView(id=2, queue="q", cpus=8)],
    )
    assert hosts_of(plan, 1) == ["up"]
    # The reason names the largest *usable* host, not the larger one that is down.
    assert "on up" in plan.reasons[2]
    assert "down" not in plan.reasons[2].split("needs", 1)[1]


def test_reason_says_no_host_takes_work() -> None:
    plan = schedule(
        [
            host("a", available=False, unavailable_reason="a drained"),
            host("b", available=False, unavailable_reason="b unreachable"),
        ],
        [queue("q", ["a", "b"])],
        [JobView(id=1, queue="q"), JobView(id=2, queue="q", nodes=2)],
    )
    assert plan.starts == []
    for job_id in (1, 2):
        reason = plan.reasons[job_id]
        assert reason.startswith("Resources: no host of queue q takes work now")
        assert "a drained" in reason
        assert "b unreachable" in reason


def test_exclusively_held_host_takes_nothing() -> None:
    plan = schedule(
        [host("held", cpus=64, used_cpus=1, exclusive=True)],
        [queue("q", ["held"])],
        [JobView(id=1, queue="q", cpus=1)],
    )
    assert plan.starts == []
    assert plan.reasons[1].startswith("Resources:")


# --------------------------------------------------------------------------- pending reasons


def test_pending_reason_names_resource_and_largest_free_host() -> None:
    plan = schedule(
        [host("h1", cpus=4), host("h2", cpus=8, used_cpus=2), host("h3", cpus=2)],
        [queue("q", ["h1", "h2", "h3"])],
        [JobView(id=1, queue="q", cpus=16)],
    )
    reason = plan.reasons[1]
    assert reason.startswith("Resources: needs 16 CPUs on one host")
    assert "largest free is 6 CPUs" in reason
    assert reason.endswith("on h2")


def test_pending_reason_for_memory() -> None:
    plan = schedule(
        [host("h1", cpus=4, memory_mb=1000)],
        [queue("q", ["h1"])],
        [JobView(id=1, queue="q", cpus=1, memory_mb=5000)],
    )
    assert "needs 1 CPU, 5000 MB on one host" in plan.reasons[1]
    assert "1000 MB" in plan.reasons[1]


def test_same_shape_gets_same_reason() -> None:
    plan = schedule(
        [host("h1", cpus=2)],
        [queue("q", ["h1"])],
        [JobView(id=i, queue="q", cpus=4) for i in (1, 2, 3)],
    )
    assert len(set(plan.reasons.values())) == 1
    assert set(plan.reasons) == {1, 2, 3}


# --------------------------------------------------------------------------- gang jobs


def test_gang_job_gets_idle_hosts_only() -> None:
    plan = schedule(
        [host("a"), host("busy", used_cpus=1), host("b"), host("c")],
        [queue("q", ["a", "busy", "b", "c"])],
        [JobView(id=1, queue="q", nodes=2, cpus=2)],
    )
    placed = starts(plan)[1]
    assert [p.host for p in placed] == ["a", "b"]
    assert all(p.exclusive and p.cpus == 8 and p.memory_mb == 16_000 for p in placed)


def test_gang_job_is_all_or_nothing() -> None:
    plan = schedule(
        [host("a"), host("b"), host("busy", used_gpus=frozenset({0}), gpus=(0,))],
        [queue("q", ["a", "b", "busy"])],
        [JobView(id=1, queue="q", nodes=3), JobView(id=2, queue="q", cpus=8)],
    )
    # Nothing is held back for the gang job: the single-node job still gets an idle host.
    assert set(starts(plan)) == {2}
    assert plan.reasons[1] == "Resources: needs 3 whole hosts with 1 CPU each; 2 free now"


def test_gang_job_gpus_per_node() -> None:
    plan = schedule(
        [host("a", gpus=(0, 1)), host("b", gpus=(0, 1)), host("c")],
        [queue("q", ["c", "a", "b"])],
        [JobView(id=1, queue="q", nodes=2, gpus=1)],
    )
    placed = starts(plan)[1]
    assert [p.host for p in placed] == ["a", "b"]
    assert all(p.gpus == (0,) for p in placed)


def test_exclusive_single_node_job_needs_an_idle_host() -> None:
    plan = schedule(
        [host("a", used_cpus=1)],
        [queue("q", ["a"])],
        [JobView(id=1, queue="q", exclusive=True)],
    )
    assert plan.starts == []
    assert "a whole host" in plan.reasons[1]


def test_nothing_shares_a_host_taken_whole_in_the_same_pass() -> None:
    plan = schedule(
        [host("a", cpus=8, gpus=(0, 1))],
        [queue("q", ["a"])],
        [JobView(id=1, queue="q", exclusive=True), JobView(id=2, queue="q", gpus=1)],
    )
    assert set(starts(plan)) == {1}
    assert set(plan.reasons) == {2}


# --------------------------------------------------------------------------- fabric islands


def islands() -> list[HostView]:
    return [
        host("a1", fabric="island-a"),
        host("a2", fabric="island-a", used_cpus=1),
        host("b1", fabric="island-b"),
        host("b2", fabric="island-b"),
        host("b3", fabric="island-b", used_memory_mb=1),
        host("x", fabric=None),
    ]


def test_fabric_gang_job_stays_in_one_island() -> None:
    plan = schedule(
        islands(),
        [queue("q", ["a1", "x", "a2", "b1", "b2", "b3"])],
        [JobView(id=1, queue="q", nodes=2, fabric="any")],
    )
    assert sorted(hosts_of(plan, 1)) == ["b1", "b2"]


def test_fabric_gang_job_reason_names_island_and_shortfall() -> None:
    plan = schedule(
        islands(),
        [queue("q", ["a1", "a2", "b1", "b2", "b3", "x"])],
        [JobView(id=1, queue="q", nodes=3, fabric="any")],
    )
    assert plan.starts == []
    reason = plan.reasons[1]
    assert "in one fabric island" in reason
    assert "best island island-b has 2 free, lacks 1" in reason


def test_fabric_gang_job_takes_the_smallest_island_that_fits() -> None:
    hosts = [host(f"a{i}", fabric="ia") for i in range(3)] + [
        host(f"b{i}", fabric="ib") for i in range(2)
    ]
    plan = schedule(
        hosts,
        [queue("q", [h.name for h in hosts])],
        [JobView(id=1, queue="q", nodes=2, fabric="any"), JobView(id=2, queue="q", nodes=3)],
    )
    assert sorted(hosts_of(plan, 1)) == ["b0", "b1"]
    assert sorted(hosts_of(plan, 2)) == ["a0", "a1", "a2"]


def test_hosts_without_a_fabric_never_take_fabric_gang_jobs() -> None:
    plan = schedule(
        [host("x"), host("y")],
        [queue("q", ["x", "y"])],
        [JobView(id=1, queue="q", nodes=2, fabric="any")],
    )
    assert plan.starts == []
    assert "lacks 2" in plan.reasons[1]


# --------------------------------------------------------------------------- infeasible


def test_infeasible_refuses_too_many_cpus() -> None:
    why = infeasible(
        JobView(id=0, queue="q", cpus=32), [host("small", cpus=4), host("big", cpus=16)]
    )
    assert why is not None
    assert "needs 32 CPUs on one host" in why
    assert "no host in queue q is that large" in why
    assert "largest: big with 16 CPUs" in why


def test_infeasible_refuses_too_many_gpus() -> None:
    why = infeasible(
        JobView(id=0, queue="q", gpus=4), [host("g", cpus=64, gpus=(0, 1)), host("c", cpus=128)]
    )
    assert why is not None
    assert "4 GPUs" in why
    assert "largest: g" in why
    assert "2 GPUs" in why


def test_infeasible_refuses_too_much_memory() -> None:
    why = infeasible(JobView(id=0, queue="q", memory_mb=10**6), [host("h", memory_mb=1000)])
    assert why is not None
    assert "1000000 MB" in why


def test_infeasible_refuses_too_many_nodes() -> None:
    why = infeasible(
        JobView(id=0, queue="q", nodes=3, cpus=8), [host("a"), host("b"), host("c", cpus=4)]
    )
    assert why is not None
    assert "needs 3 whole hosts" in why
    assert "only 2 such hosts" in why


def test_infeasible_refuses_gang_larger_than_any_island() -> None:
    why = infeasible(
        JobView(id=0, queue="q", nodes=3, fabric="any"),
        [host("a1", fabric="ia"), host("a2", fabric="ia"), host("b1", fabric="ib"), host("x")],
    )
    assert why is not None
    assert "largest island in queue q has 2 such hosts (ia)" in why


def test_infeasible_with_no_hosts() -> None:
    why = infeasible(JobView(id=0, queue="q"), [])
    assert why == "queue q has no hosts"


@pytest.mark.parametrize(
    "job",
    [
        JobView(id=0, queue="q", cpus=16, memory_mb=16_000),
        JobView(id=0, queue="q", gpus=2),
        JobView(id=0, queue="q", exclusive=True),
        JobView(id=0, queue="q", nodes=3),
        JobView(id=0, queue="q", nodes=2, fabric="any"),
    ],
)
def test_infeasible_accepts_feasible_requests(job: JobView) -> None:
    hosts = [
        # Current use and availability do not matter for "never".
        host("a", cpus=16, memory_mb=16_000, fabric="ia", used_cpus=16, available=False),
        host("b", cpus=4, gpus=(0, 1), fabric="ia"),
        host("c", cpus=4),
    ]
    assert infeasible(job, hosts) is None


# --------------------------------------------------------------------------- properties

FABRICS = ("ia", "ia", "ib", None)


@st.composite
def host_views(draw: st.DrawFn, name: str, roomy: bool) -> HostView:
    cpus = draw(st.sampled_from([2, 4, 8, 16, 32, 64]) | st.integers(1, 64))
    memory_mb = draw(st.sampled_from([16_000, 64_000, 256_000, 4000]) | st.integers(0, 256_000))
    n_gpus = draw(st.integers(0, 8))
    if draw(st.booleans()):
        gpus = tuple(range(n_gpus))
    else:
        gpus = tuple(sorted(draw(st.sets(st.integers(0, 15), max_size=n_gpus))))
    if roomy or not draw(st.booleans()):  # idle half the time (and in the simplest examples)
        used_cpus = used_mem = 0
        used_gpus: frozenset[int] = frozenset()
    else:
        used_cpus = draw(st.integers(0, cpus))
        used_mem = draw(st.integers(0, memory_mb))
        used_gpus = frozenset(draw(st.sets(st.sampled_from(gpus)))) if gpus else frozenset()
    available = roomy or draw(st.integers(0, 5)) < 5
    return HostView(
        name=name,
        cpus=cpus,
        memory_mb=memory_mb,
        gpus=gpus,
        fabric=draw(st.sampled_from(FABRICS)),
        available=available,
        unavailable_reason=None if available else f"{name} down",
        used_cpus=used_cpus,
        used_memory_mb=used_mem,
        used_gpus=used_gpus,
        exclusive=not roomy and draw(st.integers(0, 9)) == 9,
    )


Shape = tuple[int, int, int, int, bool, str | None]


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    return (
        draw(st.sampled_from([1, 1, 2, 4, 8]) | st.integers(1, 24)),
        draw(st.sampled_from([0, 0, 500, 2000, 8000, 32_000])),
        draw(st.sampled_from([0, 0, 0, 0, 1, 2, 4])),
        draw(st.sampled_from([1, 1, 1, 2, 2, 3])),
        draw(st.integers(0, 5)) == 5,
        draw(st.sampled_from([None, "any", "ia"])),
    )


@st.composite
def clusters(
    draw: st.DrawFn, roomy: bool = False
) -> tuple[list[HostView], list[QueueView], list[JobView]]:
    """Hosts, queues and jobs; `roomy`: every host idle and up (so gang jobs start often)."""
    n_hosts = draw(st.integers(1, 12))
    hosts = [draw(host_views(f"h{i}", roomy)) for i in range(n_hosts)]
    names = [h.name for h in hosts]
    queues = [
        QueueView(
            name=f"q{i}",
            priority=draw(st.integers(0, 3)),
            hosts=tuple(
                draw(st.permutations(names))[: draw(st.integers(1, n_hosts) | st.just(n_hosts))]
            ),
            enabled=draw(st.integers(0, 7)) < 7,
        )
        for i in range(draw(st.integers(1, 3)))
    ]
    # Jobs draw their shape from a small pool, so equal shapes are common (FIFO, priority).
    pool = draw(st.lists(shapes(), min_size=1, max_size=8))
    jobs = []
    for i in range(draw(st.integers(1, 40))):
        cpus, mem, gpus, nodes, exclusive, fabric = draw(st.sampled_from(pool))
        jobs.append(
            JobView(
                id=i + 1,
                queue=draw(st.sampled_from(queues)).name,
                cpus=cpus,
                memory_mb=mem,
                gpus=gpus,
                nodes=nodes,
                exclusive=exclusive,
                fabric=fabric,
            )
        )
    return hosts, queues, jobs


def resources(job: JobView) -> Shape:
    """The shape of a request without its queue."""
    return (job.cpus, job.memory_mb, job.gpus, job.nodes, job.exclusive, job.fabric)


def check_plan(hosts: list[HostView], queues: list[QueueView], jobs: list[JobView]) -> Plan:
    plan = schedule(hosts, queues, jobs)
    hv = {h.name: h for h in hosts}
    qv = {q.name: q for q in queues}
    jv = {j.id: j for j in jobs}

    # Every job is either started (once) or has a reason, never both.
    started_ids = [job_id for job_id, _ in plan.starts]
    assert len(started_ids) == len(set(started_ids)), "a job started twice"
    started = dict(plan.starts)
    assert set(started) <= set(jv)
    assert set(plan.reasons) <= set(jv)
    assert not set(started) & set(plan.reasons), "started and has a reason"
    assert set(started) | set(plan.reasons) == set(jv), "neither started nor has a reason"
    assert all(plan.reasons.values())

    cpus = {n: h.used_cpus for n, h in hv.items()}
    mem = {n: h.used_memory_mb for n, h in hv.items()}
    gpus: dict[str, set[int]] = {n: set(h.used_gpus) for n, h in hv.items()}
    placements_on: Counter[str] = Counter()
    whole_hosts: set[str] = set()

    for job_id, placed in plan.starts:
        job = jv[job_id]
        q = qv[job.queue]
        assert q.enabled
        if job.whole_hosts:
            assert len(placed) == job.nodes
            assert len({p.host for p in placed}) == job.nodes, "gang on one host twice"
            if job.fabric:
                fabrics = {hv[p.host].fabric for p in placed}
                assert len(fabrics) == 1 and None not in fabrics, f"gang spans {fabrics}"
        else:
            assert len(placed) == 1
        for p in placed:
            h = hv[p.host]
            assert h.available, f"job {job_id} on unavailable host {p.host}"
            assert not h.exclusive, f"job {job_id} on exclusively held host {p.host}"
            assert p.host in q.hosts, f"job {job_id} on {p.host}, not in queue {q.name}"
            assert len(p.gpus) == job.gpus
            assert len(set(p.gpus)) == len(p.gpus)
            for g in p.gpus:
                assert g in h.gpus, f"GPU {g} does not exist on {p.host}"
                assert g not in gpus[p.host], f"GPU {g} on {p.host} assigned twice"
                gpus[p.host].add(g)
            if job.whole_hosts:
                assert h.idle, f"whole-host job {job_id} on non-idle host {p.host}"
                assert p.exclusive
                assert (p.cpus, p.memory_mb) == (h.cpus, h.memory_mb)
                whole_hosts.add(p.host)
            else:
                assert not p.exclusive
                assert (p.cpus, p.memory_mb) == (job.cpus, job.memory_mb)
            assert p.cpus >= job.cpus and p.memory_mb >= job.memory_mb
            cpus[p.host] += p.cpus
            mem[p.host] += p.memory_mb
            placements_on[p.host] += 1

    for name, h in hv.items():
        assert cpus[name] <= h.cpus, f"CPUs over-committed on {name}"
        assert mem[name] <= h.memory_mb, f"memory over-committed on {name}"
        assert gpus[name] <= set(h.gpus), f"GPUs over-committed on {name}"
    for name in whole_hosts:
        assert placements_on[name] == 1, f"whole host {name} shared in one plan"

    # Reasons say what kind of wait it is.
    for job_id, reason in plan.reasons.items():
        job = jv[job_id]
        if job.queue not in qv:
            assert reason.startswith("QueueUnknown:")
        elif not qv[job.queue].enabled:
            assert reason.startswith("QueueDisabled:")
        else:
            assert reason.startswith("Resources:")
    return plan


def check_fifo(jobs: list[JobView], plan: Plan) -> None:
    """Within a queue, a later job of the same shape never starts while an earlier one waits."""
    started = dict(plan.starts)
    for i, a in enumerate(jobs):
        for b in jobs[i + 1 :]:
            if a.shape() == b.shape() and b.id in started:
                assert a.id in started, f"job {b.id} started before earlier equal job {a.id}"
    # And the jobs of one queue that start are started in the order given.
    position = {job_id: n for n, (job_id, _) in enumerate(plan.starts)}
    for i, a in enumerate(jobs):
        for b in jobs[i + 1 :]:
            if a.queue == b.queue and a.id in position and b.id in position:
                assert position[a.id] < position[b.id], f"job {b.id} planned before {a.id}"


def check_priority(queues: list[QueueView], jobs: list[JobView], plan: Plan) -> None:
    """No job of a lower-priority queue takes hosts an equal job of a higher one waits for."""
    qv = {q.name: q for q in queues}
    started = dict(plan.starts)
    waiting = [j for j in jobs if j.id in plan.reasons and j.queue in qv and qv[j.queue].enabled]
    for low in jobs:
        if low.id not in started:
            continue
        used = {p.host for p in started[low.id]}
        for high in waiting:
            hq = qv[high.queue]
            if (
                hq.priority > qv[low.queue].priority
                and resources(high) == resources(low)
                and used <= set(hq.hosts)
            ):
                raise AssertionError(
                    f"job {low.id} (queue {low.queue}) started on {sorted(used)} while equal "
                    f"job {high.id} of higher-priority queue {high.queue} waits: "
                    f"{plan.reasons[high.id]}"
                )


def _fits(job: JobView, free: dict[str, HostView], queue_hosts: Sequence[str]) -> bool:
    """Whether `job` fits in `free` on its queue's hosts (an independent re-statement)."""
    ok = [
        h
        for name in dict.fromkeys(queue_hosts)
        if (h := free.get(name)) is not None
        and h.available
        and not h.exclusive
        and (h.idle or not job.whole_hosts)
        and h.cpus - h.used_cpus >= job.cpus
        and h.memory_mb - h.used_memory_mb >= job.memory_mb
        and len(set(h.gpus) - h.used_gpus) >= job.gpus
    ]
    if not job.whole_hosts:
        return bool(ok)
    if not job.fabric:
        return len(ok) >= job.nodes
    by_island = Counter(
        h.fabric
        for h in ok
        if h.fabric is not None and job.fabric in ("any", h.fabric, h.fabric.split("-")[0])
    )
    return any(n >= job.nodes for n in by_island.values())


def check_waits_only_when_full(
    hosts: list[HostView], queues: list[QueueView], jobs: list[JobView], plan: Plan
) -> None:
    """A job waiting for resources does not fit in what the plan leaves free.

    Resources only shrink during a pass, so if it fits at the end it fitted when
    its turn came, and should have started.
    """
    qv = {q.name: q for q in queues}
    after = {h.name: h for h in hosts}
    for _, placed in plan.starts:
        for p in placed:
            h = after[p.host]
            after[p.host] = dataclasses.replace(
                h,
                used_cpus=h.used_cpus + p.cpus,
                used_memory_mb=h.used_memory_mb + p.memory_mb,
                used_gpus=h.used_gpus | set(p.gpus),
                exclusive=h.exclusive or p.exclusive,
            )
    for job in jobs:
        if job.id in plan.reasons and job.queue in qv and qv[job.queue].enabled:
            assert not _fits(job, after, qv[job.queue].hosts), (
                f"job {job.id} waits ({plan.reasons[job.id]}) but fits in what is left"
            )


def check_started_jobs_feasible(
    hosts: list[HostView], queues: list[QueueView], jobs: list[JobView], plan: Plan
) -> None:
    """`infeasible` never refuses what `schedule` starts."""
    hv = {h.name: h for h in hosts}
    qv = {q.name: q for q in queues}
    jv = {j.id: j for j in jobs}
    for job_id, _ in plan.starts:
        job = jv[job_id]
        pool = [hv[n] for n in qv[job.queue].hosts if n in hv]
        assert infeasible(job, pool) is None, f"job {job_id} started but called infeasible"


Cluster = tuple[list[HostView], list[QueueView], list[JobView]]


# One generated cluster feeds every property: generating is most of the cost.
@settings(max_examples=200, deadline=None)
@given(clusters() | clusters(roomy=True))
def test_scheduling_properties(cluster: Cluster) -> None:
    hosts, queues, jobs = cluster
    before = copy.deepcopy(cluster)
    plan = check_plan(hosts, queues, jobs)
    assert (hosts, queues, jobs) == before, "schedule changed its inputs"
    again = schedule(iter(hosts), iter(queues), iter(jobs))
    assert (again.starts, again.reasons) == (plan.starts, plan.reasons), "not deterministic"
    check_fifo(jobs, plan)
    check_priority(queues, jobs, plan)
    check_waits_only_when_full(hosts, queues, jobs, plan)
    check_started_jobs_feasible(hosts, queues, jobs, plan)


def test_exclusive_single_node_with_fabric_needs_an_island_host() -> None:
    job = JobView(1, "q", exclusive=True, fabric="any")
    plain = HostView("a", 8, 1000, fabric=None)
    assert "island" in (infeasible(job, [plain]) or "")  # refused, not left waiting forever
    island = HostView("b", 8, 1000, fabric="ib-a")
    assert infeasible(job, [plain, island]) is None
    plan = schedule([plain, island], [QueueView("q", 1, ("a", "b"))], [job])
    assert plan.starts and plan.starts[0][1][0].host == "b"


def test_a_host_listed_twice_is_placed_once() -> None:
    plan = schedule(
        [HostView("a", 8, 1000)], [QueueView("q", 1, ("a", "a"))], [JobView(1, "q", nodes=2)]
    )
    assert plan.starts == [] and 1 in plan.reasons


def test_in_steps_yields_between_jobs_and_ends_with_the_same_plan() -> None:
    hosts = [host(f"n{i}", cpus=4) for i in range(20)]
    queues = [queue("batch", [h.name for h in hosts])]
    jobs = [JobView(id=i, queue="batch", cpus=1 + i % 3) for i in range(1, 1001)]
    steps = list(schedule_in_steps(hosts, queues, jobs, now=0.0))
    assert steps[:-1] == [None] * (len(jobs) // STEP)  # a step after every STEP jobs
    plan = steps[-1]
    assert isinstance(plan, Plan)
    whole = schedule(hosts, queues, jobs, now=0.0)
    assert plan.starts == whole.starts and plan.reasons == whole.reasons
