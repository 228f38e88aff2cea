"""Examples of the scheduler's policy beyond placement: compute environments, queue
limits, throttles, fair share, EASY backfill, and `infeasible` with compute environments."""

from __future__ import annotations

from hpcbatch.core import fairshare
from hpcbatch.core.records import Placement
from hpcbatch.core.scheduler import (
    ComputeEnvView,
    HostView,
    JobView,
    Plan,
    QueuePolicy,
    QueueView,
    RunningView,
    infeasible,
    schedule,
)

NOW = 1000.0


def started(plan: Plan) -> dict[int, tuple[Placement, ...]]:
    return dict(plan.starts)


def where(plan: Plan, job_id: int) -> list[str]:
    return [p.host for p in started(plan)[job_id]]


def run(
    host: str, cpus: int, job_id: int = 900, *, start: float = 0.0, limit: float | None = None,
    queue: str = "q", **kw: object,
) -> RunningView:  # fmt: skip
    return RunningView(
        job_id,
        queue,
        (Placement(host, cpus, 0),),
        start=start,
        time_limit_s=limit,
        **kw,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- compute environments


def test_compute_environments_are_tried_in_order() -> None:
    hosts = [HostView("a1", 8, 1000), HostView("b1", 8, 1000, used_cpus=7)]
    ces = [ComputeEnvView("first", ("a1",)), ComputeEnvView("second", ("b1",))]
    q = QueueView("q", 1, compute_envs=("first", "second"))
    plan = schedule(hosts, [q], [JobView(1, "q"), JobView(2, "q", cpus=8)], compute_envs=ces)
    # Best fit would pick b1 (7 of 8 CPUs used), but "first" comes first.
    assert where(plan, 1) == ["a1"]
    assert plan.compute_envs[1] == "first"
    assert 2 in plan.reasons  # a1 has 7 left, b1 has 1


def test_disabled_compute_environment_is_skipped() -> None:
    hosts = [HostView("a1", 8, 1000), HostView("b1", 8, 1000)]
    ces = [ComputeEnvView("off", ("a1",), enabled=False), ComputeEnvView("on", ("b1",))]
    q = QueueView("q", 1, compute_envs=("off", "on"))
    plan = schedule(hosts, [q], [JobView(1, "q"), JobView(2, "q", cpus=8)], compute_envs=ces)
    assert where(plan, 1) == ["b1"]
    assert plan.reasons[2].startswith("Resources:")


def test_every_compute_environment_disabled() -> None:
    ces = [ComputeEnvView("off", ("a1",), enabled=False)]
    plan = schedule(
        [HostView("a1", 8, 1000)],
        [QueueView("q", 1, compute_envs=("off",))],
        [JobView(1, "q")],
        compute_envs=ces,
    )
    assert plan.reasons[1].startswith("ComputeEnvDisabled:")
    assert "off" in plan.reasons[1]


def test_compute_environment_vcpu_cap_counts_running_allocations() -> None:
    hosts = [HostView("a1", 16, 1000, used_cpus=6), HostView("b1", 16, 1000)]
    ces = [ComputeEnvView("capped", ("a1",), max_vcpus=8), ComputeEnvView("spill", ("b1",))]
    running = [run("a1", 6, compute_env="capped")]
    q = QueueView("q", 1, compute_envs=("capped", "spill"))
    plan = schedule(
        hosts,
        [q],
        [JobView(1, "q", cpus=2), JobView(2, "q", cpus=2), JobView(3, "q", cpus=16)],
        compute_envs=ces,
        running=running,
    )
    assert where(plan, 1) == ["a1"]  # 6 + 2 = 8: at the cap
    assert where(plan, 2) == ["b1"]  # the cap sends it on to the next environment
    assert plan.compute_envs[2] == "spill"
    assert plan.reasons[3].startswith("Resources:")


def test_compute_env_limit_reason_when_every_environment_is_capped() -> None:
    ces = [ComputeEnvView("c", ("a1",), max_vcpus=4, used_vcpus=4)]
    plan = schedule(
        [HostView("a1", 16, 1000, used_cpus=4)],
        [QueueView("q", 1, compute_envs=("c",))],
        [JobView(1, "q")],
        compute_envs=ces,
    )
    assert plan.reasons[1].startswith("ComputeEnvLimit:")
    assert "4 of 4" in plan.reasons[1]


def test_a_host_in_two_environments_is_never_overcommitted() -> None:
    ces = [ComputeEnvView("x", ("a1",)), ComputeEnvView("y", ("a1",))]
    queues = [
        QueueView("qx", 2, compute_envs=("x",)),
        QueueView("qy", 1, compute_envs=("y",)),
    ]
    plan = schedule(
        [HostView("a1", 4, 1000)],
        queues,
        [JobView(1, "qx", cpus=3), JobView(2, "qy", cpus=2), JobView(3, "qy", cpus=1)],
        compute_envs=ces,
    )
    assert set(started(plan)) == {1, 3}
    assert plan.reasons[2].startswith("Resources:")


# ---------------------------------------------------------------- queue limits, throttles


def test_queue_max_running_counts_running_jobs() -> None:
    plan = schedule(
        [HostView("a1", 64, 1000)],
        [QueueView("q", 1, ("a1",), max_running=3)],
        [JobView(i, "q") for i in (1, 2, 3)],
        running=[run("a1", 1, 100), run("a1", 1, 101)],
    )
    assert set(started(plan)) == {1}
    assert plan.reasons[2].startswith("QueueLimit:")
    assert "at most 3 jobs" in plan.reasons[2]


def test_queue_max_vcpus() -> None:
    plan = schedule(
        [HostView("a1", 64, 1000)],
        [QueueView("q", 1, ("a1",), max_vcpus=10)],
        [JobView(1, "q", cpus=4), JobView(2, "q", cpus=8), JobView(3, "q", cpus=2)],
        running=[run("a1", 4)],
    )
    assert set(started(plan)) == {1, 3}  # 4 + 4 + 2 = 10
    assert plan.reasons[2].startswith("QueueLimit:")
    assert "10 vCPUs" in plan.reasons[2]


def test_disabled_queue_keeps_jobs_and_other_queues_run() -> None:
    plan = schedule(
        [HostView("a1", 4, 1000)],
        [QueueView("off", 9, ("a1",), enabled=False), QueueView("on", 1, ("a1",))],
        [JobView(1, "off"), JobView(2, "on")],
    )
    assert set(started(plan)) == {2}
    assert plan.reasons[1].startswith("QueueDisabled:")


def test_throttle_limits_children_running_at_once() -> None:
    running = [run("a1", 1, 100, throttle_group="7"), run("a1", 1, 101, throttle_group="7")]
    jobs = [JobView(i, "q", throttle_group="7", throttle_limit=3) for i in (1, 2, 3)]
    jobs.append(JobView(4, "q", throttle_group="8", throttle_limit=1))
    plan = schedule(
        [HostView("a1", 64, 1000, used_cpus=2)],
        [QueueView("q", 1, ("a1",))],
        jobs,
        running=running,
    )
    assert set(started(plan)) == {1, 4}
    for job_id in (2, 3):
        assert plan.reasons[job_id] == (
            "Throttle: array job 7 runs at most 3 children at once (3 running)"
        )


# --------------------------------------------------------------------------- fair share


def test_fair_share_runs_the_light_user_first() -> None:
    jobs = [JobView(i, "q", cpus=4, user="heavy") for i in (1, 2, 3)]
    jobs.append(JobView(4, "q", cpus=4, user="light"))
    plan = schedule(
        [HostView("a1", 8, 1000)],
        [QueueView("q", 1, ("a1",), policy=QueuePolicy.FAIRSHARE)],
        jobs,
        usage={"heavy": 1e6, "light": 10.0},
    )
    assert set(started(plan)) == {4, 1}
    assert plan.starts[0][0] == 4


def test_fifo_queue_ignores_usage() -> None:
    jobs = [JobView(1, "q", cpus=8, user="heavy"), JobView(2, "q", cpus=8, user="light")]
    plan = schedule(
        [HostView("a1", 8, 1000)],
        [QueueView("q", 1, ("a1",))],
        jobs,
        usage={"heavy": 1e6},
    )
    assert set(started(plan)) == {1}


def test_fair_share_interleaves_users_within_a_pass() -> None:
    jobs = [JobView(i, "q", user="a", time_limit_s=100) for i in range(1, 5)]
    jobs += [JobView(i, "q", user="b", time_limit_s=100) for i in range(5, 9)]
    plan = schedule(
        [HostView("h", 4, 1000)],
        [QueueView("q", 1, ("h",), policy=QueuePolicy.FAIRSHARE)],
        jobs,
    )
    users = ["a" if job_id < 5 else "b" for job_id, _ in plan.starts]
    assert users == ["a", "b", "a", "b"]


def test_shares_weigh_usage() -> None:
    jobs = [JobView(1, "q", cpus=8, user="big"), JobView(2, "q", cpus=8, user="small")]
    plan = schedule(
        [HostView("a1", 8, 1000)],
        [QueueView("q", 1, ("a1",), policy=QueuePolicy.FAIRSHARE)],
        jobs,
        usage={"big": 300.0, "small": 200.0},
        shares={"big": 10.0, "small": 1.0},
    )
    assert set(started(plan)) == {1}  # 300/10 < 200/1


def test_fairshare_math() -> None:
    assert fairshare.decay(100.0, 3600.0, 3600.0) == 50.0
    assert fairshare.charge(4, 1, 10.0, gpu_weight=8.0) == 120.0
    u = fairshare.Usage().add(100.0, at=0.0, half_life_s=10.0).add(100.0, at=10.0, half_life_s=10.0)
    assert u == fairshare.Usage(150.0, 10.0)
    assert u.at(20.0, 10.0) == 75.0
    late = u.add(100.0, at=0.0, half_life_s=10.0)  # dated before as_of: decayed, not rewound
    assert late == fairshare.Usage(200.0, 10.0)
    f = fairshare.factors({"a": 0.0, "b": 100.0, "c": 300.0}, {})
    assert f["a"] == 1.0 and 0 < f["c"] < f["b"] < 1


# --------------------------------------------------------------------------- backfill


def backfill_cluster() -> tuple[list[HostView], list[QueueView], list[RunningView]]:
    # h1: 16 CPUs, 12 of them used by a job that ends at 1100 (started 100, limit 1000).
    hosts = [HostView("h1", 16, 1000, used_cpus=12)]
    running = [run("h1", 12, start=100.0, limit=1000.0)]
    return hosts, [QueueView("q", 1, ("h1",))], running


def test_blocked_job_gets_a_reservation() -> None:
    hosts, queues, running = backfill_cluster()
    plan = schedule(hosts, queues, [JobView(1, "q", cpus=10)], now=NOW, running=running)
    (r,) = plan.reservations
    assert (r.job_id, r.start, r.hosts) == (1, 1100.0, ("h1",))
    assert plan.reasons[1].startswith("Resources: needs 10 CPUs")
    assert "reserved: expected to start in 1:40 on h1" in plan.reasons[1]


def test_short_job_backfills_long_job_waits_behind_reservation() -> None:
    # h1: 16 CPUs, 4 used by a job that ends at 1100. Job 1 needs 14: blocked now
    # (12 free), reserved at 1100, when 16 are free and 2 are spare.
    hosts = [HostView("h1", 16, 1000, used_cpus=4)]
    running = [run("h1", 4, start=100.0, limit=1000.0)]
    jobs = [
        JobView(1, "q", cpus=14),
        JobView(2, "q", cpus=4, time_limit_s=50),  # ends at 1050, before 1100: backfills
        JobView(3, "q", cpus=4, time_limit_s=5000),  # 4 CPUs past 1100 > 2 spare: waits
        JobView(4, "q", cpus=2),  # no limit, never ends, but fits in the 2 spare
        JobView(5, "q", cpus=1, time_limit_s=5000),  # spare used up by job 4: waits
    ]
    plan = schedule(hosts, [QueueView("q", 1, ("h1",))], jobs, now=NOW, running=running)
    assert plan.reservations[0].job_id == 1
    assert set(started(plan)) == {2, 4}
    for job_id in (3, 5):
        assert plan.reasons[job_id].startswith(
            "Reservation: waiting behind the reservation for job 1, which starts in 1:40 on h1"
        )


def test_queue_default_time_limit_lets_jobs_backfill() -> None:
    hosts, _, running = backfill_cluster()
    queues = [QueueView("q", 1, ("h1",), default_time_limit_s=60.0)]
    jobs = [JobView(1, "q", cpus=10), JobView(2, "q", cpus=4)]
    plan = schedule(hosts, queues, jobs, now=NOW, running=running)
    assert set(started(plan)) == {2}  # defaults to 60 s: ends at 1060 < 1100
    plan = schedule(hosts, queues, jobs, now=NOW, running=running, backfill=False)
    assert set(started(plan)) == {2} and plan.reservations == []


def test_without_known_ends_there_is_no_reservation() -> None:
    hosts = [HostView("h1", 16, 1000, used_cpus=12)]  # no running view: end unknown
    plan = schedule(
        hosts, [QueueView("q", 1, ("h1",))], [JobView(1, "q", cpus=10), JobView(2, "q", cpus=4)]
    )
    assert plan.reservations == []
    assert set(started(plan)) == {2}


def test_gang_reservation_keeps_idle_hosts_for_the_gang() -> None:
    hosts = [HostView("a", 8, 1000), HostView("b", 8, 1000, used_cpus=8)]
    running = [run("b", 8, start=900.0, limit=200.0)]  # b is free at 1100
    queues = [QueueView("q", 1, ("a", "b"))]
    jobs = [
        JobView(1, "q", nodes=2),
        JobView(2, "q", cpus=2, time_limit_s=500),  # would hold a past 1100
        JobView(3, "q", cpus=2, time_limit_s=50),  # done by 1050
    ]
    plan = schedule(hosts, queues, jobs, now=NOW, running=running)
    assert plan.reservations[0].hosts == ("a", "b")
    assert plan.reservations[0].start == 1100.0
    assert set(started(plan)) == {3}
    assert plan.reasons[2].startswith("Reservation:")


def test_lower_priority_queue_respects_the_reservation() -> None:
    hosts = [HostView("h1", 16, 1000, used_cpus=12)]
    running = [run("h1", 12, start=100.0, limit=1000.0, queue="hi")]
    queues = [QueueView("hi", 5, ("h1",)), QueueView("lo", 1, ("h1",))]
    jobs = [
        JobView(1, "hi", cpus=14),  # reserved at 1100; 2 spare then
        JobView(2, "lo", cpus=3, time_limit_s=1000),  # fits now (4 free), would delay job 1
        JobView(3, "lo", cpus=2, time_limit_s=1000),  # fits in the spare
    ]
    plan = schedule(hosts, queues, jobs, now=NOW, running=running)
    assert plan.reservations[0].job_id == 1
    assert plan.reasons[2].startswith("Reservation:")
    assert set(started(plan)) == {3}


def test_overdue_running_job_counts_as_ending_now() -> None:
    hosts = [HostView("h1", 8, 1000, used_cpus=8)]
    running = [run("h1", 8, start=0.0, limit=10.0)]  # should have ended at 10
    plan = schedule(
        hosts,
        [QueueView("q", 1, ("h1",))],
        [JobView(1, "q", cpus=8), JobView(2, "q", cpus=1)],
        now=NOW,
        running=running,
    )
    assert plan.reservations[0].start == NOW
    assert "expected to start now" in plan.reasons[1]


# --------------------------------------------------------------------------- infeasible


def test_infeasible_counts_disabled_environments_as_possible() -> None:
    hosts = [HostView("small", 4, 1000), HostView("big", 64, 1000)]
    ces = [ComputeEnvView("s", ("small",)), ComputeEnvView("b", ("big",), enabled=False)]
    q = QueueView("q", 1, compute_envs=("s", "b"))
    assert infeasible(JobView(0, "q", cpus=32), hosts, queue=q, compute_envs=ces) is None


def test_infeasible_with_environments_names_each() -> None:
    hosts = [HostView("small", 4, 1000), HostView("big", 64, 1000)]
    ces = [ComputeEnvView("s", ("small",)), ComputeEnvView("b", ("big",), max_vcpus=16)]
    q = QueueView("q", 1, compute_envs=("s", "b"))
    why = infeasible(JobView(0, "q", cpus=32), hosts, queue=q, compute_envs=ces)
    assert why is not None
    assert "compute environment s is that large" in why
    assert "compute environment b allows at most 16" in why


def test_infeasible_whole_hosts_are_charged_whole() -> None:
    hosts = [HostView("a", 16, 1000), HostView("b", 16, 1000)]
    ces = [ComputeEnvView("c", ("a", "b"), max_vcpus=24)]
    q = QueueView("q", 1, compute_envs=("c",))
    why = infeasible(JobView(0, "q", cpus=1, nodes=2), hosts, queue=q, compute_envs=ces)
    assert why is not None and "needs 32 vCPUs" in why
    assert infeasible(JobView(0, "q", cpus=8), hosts, queue=q, compute_envs=ces) is None


def test_infeasible_queue_vcpu_limit() -> None:
    q = QueueView("q", 1, compute_envs=("c",), max_vcpus=4)
    ces = [ComputeEnvView("c", ("a",))]
    why = infeasible(JobView(0, "q", cpus=8), [HostView("a", 16, 1000)], queue=q, compute_envs=ces)
    assert why == "needs 8 vCPUs; queue q allows at most 4 at once"
