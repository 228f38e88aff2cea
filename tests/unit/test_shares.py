"""Fair share by share identifier: weights, per-queue half-life, compute reservation."""

from __future__ import annotations

from hpcbatch.core.records import Placement
from hpcbatch.core.scheduler import (
    HostView,
    JobView,
    QueuePolicy,
    QueueView,
    RunningView,
    schedule,
)


def fair_queue(**kw: object) -> QueueView:
    return QueueView("q", 1, hosts=("h",), policy=QueuePolicy.FAIRSHARE, **kw)  # type: ignore[arg-type]


def started_ids(
    hosts: list[HostView], q: QueueView, jobs: list[JobView], **kw: object
) -> list[int]:
    plan = schedule(hosts, [q], jobs, **kw)  # type: ignore[arg-type]
    return [job_id for job_id, _ in plan.starts]


def test_share_id_replaces_the_user_as_the_fair_share_key() -> None:
    # Two users, one project: alice's and bob's jobs share "proj", which has used a lot.
    jobs = [
        JobView(1, "q", user="alice", share_id="proj"),
        JobView(2, "q", user="bob", share_id="proj"),
        JobView(3, "q", user="carol"),
    ]
    got = started_ids([HostView("h", 1, 1000)], fair_queue(), jobs, usage={"proj": 100.0})
    assert got == [3]


def test_weights_give_three_to_one_of_the_starts() -> None:
    # Many 1-CPU, 60 s jobs from two identifiers on 40 free CPUs: each start charges
    # 60 CPU-s, and weights 3:1 make "big" take three slots for each of "small"'s.
    jobs = [JobView(i, "q", user="u", share_id="big", time_limit_s=60) for i in range(100)]
    jobs += [JobView(100 + i, "q", user="v", share_id="small", time_limit_s=60) for i in range(100)]
    q = fair_queue(shares={"big": 3.0, "small": 1.0})
    got = started_ids([HostView("h", 40, 100_000)], q, jobs)
    big = sum(1 for j in got if j < 100)
    assert len(got) == 40
    assert big == 30, big


def test_queue_shares_replace_the_global_ones() -> None:
    jobs = [JobView(1, "q", user="a"), JobView(2, "q", user="b")]
    q = fair_queue(shares={"b": 10.0})
    got = started_ids(
        [HostView("h", 1, 1000)], q, jobs, usage={"a": 5.0, "b": 20.0}, shares={"a": 100.0}
    )
    assert got == [2]  # b: 20/10 = 2 < a: 5/1


def test_a_queue_half_life_reads_its_own_usage() -> None:
    jobs = [JobView(1, "q", user="a"), JobView(2, "q", user="b")]
    q = fair_queue(half_life_s=3600.0)
    got = started_ids(
        [HostView("h", 1, 1000)],
        q,
        jobs,
        usage={"a": 0.0, "b": 50.0},
        usage_by_half_life={3600.0: {"a": 50.0, "b": 0.0}},
    )
    assert got == [2]


def test_compute_reservation_keeps_cpus_for_identifiers_not_yet_active() -> None:
    # 10 CPUs, 50% reserved: with "a" active, "a" may use at most 5 (1 - 0.5 ** 1).
    running = [RunningView(900, "q", (Placement("h", 4, 0),), user="a")]
    host = HostView("h", 10, 1000, used_cpus=4)
    q = fair_queue(compute_reservation=50)
    jobs = [JobView(i, "q", user="a") for i in range(1, 4)]
    plan = schedule([host], [q], jobs, running=running)
    assert [j for j, _ in plan.starts] == [1]
    assert plan.reasons[2].startswith("ShareReservation: queue q keeps 5 of its 10 vCPUs"), plan
    # A newcomer is not held back; once it runs, two are active and 75% may be used.
    jobs.append(JobView(4, "q", user="b"))
    plan = schedule([host], [q], jobs, running=running)
    started = [j for j, _ in plan.starts]
    assert 4 in started
    assert len(started) == 3  # a: 1, then b, then a again up to 7 of 10 (int(7.5))


def test_share_id_fifo_within_an_identifier() -> None:
    jobs = [JobView(i, "q", user=f"u{i}", share_id="p") for i in range(1, 4)]
    got = started_ids([HostView("h", 2, 1000)], fair_queue(), jobs)
    assert got == [1, 2]
