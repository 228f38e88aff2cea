"""Allocation strategies and host weights: which host a job lands on."""

from __future__ import annotations

from hpcbatch.core.scheduler import (
    AllocationStrategy,
    ComputeEnvView,
    HostView,
    JobView,
    Plan,
    QueueView,
    schedule,
)


def hosts_of(plan: Plan) -> dict[int, list[str]]:
    return {job_id: [p.host for p in ps] for job_id, ps in plan.starts}


def run(
    hosts: list[HostView], jobs: list[JobView], strategy: AllocationStrategy
) -> dict[int, list[str]]:
    ce = ComputeEnvView("ce", tuple(h.name for h in hosts), strategy=strategy)
    q = QueueView("q", 1, compute_envs=("ce",))
    return hosts_of(schedule(hosts, [q], jobs, compute_envs=[ce]))


def test_best_fit_packs_onto_the_fullest_host() -> None:
    hosts = [HostView("a", 8, 1000), HostView("b", 8, 1000, used_cpus=6)]
    got = run(hosts, [JobView(1, "q"), JobView(2, "q")], AllocationStrategy.BEST_FIT)
    assert got == {1: ["b"], 2: ["b"]}


def test_spread_takes_the_least_loaded_host_each_time() -> None:
    hosts = [HostView("a", 8, 1000, used_cpus=2), HostView("b", 8, 1000, used_cpus=6)]
    jobs = [JobView(i, "q") for i in range(1, 5)]
    got = run(hosts, jobs, AllocationStrategy.SPREAD)
    # a has 6 free, b 2: a, a (5 left), a (4 left), a (3 left > 2)... until a and b are level.
    assert [got[i][0] for i in range(1, 5)] == ["a", "a", "a", "a"]
    more = run(hosts, [JobView(i, "q") for i in range(1, 8)], AllocationStrategy.SPREAD)
    assert sorted(h[0] for h in more.values()).count("b") == 1  # levelled at 2 free, then b


def test_spread_alternates_between_empty_hosts() -> None:
    hosts = [HostView("a", 4, 1000), HostView("b", 4, 1000), HostView("c", 4, 1000)]
    got = run(hosts, [JobView(i, "q") for i in range(1, 4)], AllocationStrategy.SPREAD)
    assert sorted(h[0] for h in got.values()) == ["a", "b", "c"]


def test_spread_keeps_gpu_hosts_for_gpu_jobs_on_a_tie() -> None:
    hosts = [HostView("gpu", 8, 1000, gpus=(0, 1)), HostView("cpu", 8, 1000)]
    got = run(hosts, [JobView(1, "q")], AllocationStrategy.SPREAD)
    assert got == {1: ["cpu"]}


def test_best_fit_progressive_is_best_fit_among_hosts_up() -> None:
    hosts = [HostView("a", 8, 1000), HostView("b", 8, 1000, used_cpus=6)]
    got = run(hosts, [JobView(1, "q")], AllocationStrategy.BEST_FIT_PROGRESSIVE)
    assert got == {1: ["b"]}


def test_lower_weight_fills_first_whatever_the_strategy() -> None:
    hosts = [
        HostView("big-expensive", 64, 8000, weight=10),
        HostView("small-cheap1", 4, 1000, weight=1),
        HostView("small-cheap2", 4, 1000, weight=1),
    ]
    for strategy in AllocationStrategy:
        jobs = [JobView(i, "q", cpus=2) for i in range(1, 6)]
        got = run(hosts, jobs, strategy)
        cheap = [j for j, h in got.items() if h[0].startswith("small")]
        assert len(cheap) == 4, (strategy, got)  # 2 x 4 CPUs, 2 CPUs each
        assert got[5] == ["big-expensive"], (strategy, got)


def test_weight_orders_the_hosts_of_a_gang() -> None:
    hosts = [
        HostView("n1", 4, 1000, weight=5),
        HostView("n2", 4, 1000, weight=1),
        HostView("n3", 4, 1000, weight=3),
    ]
    got = run(hosts, [JobView(1, "q", nodes=2)], AllocationStrategy.BEST_FIT)
    assert got == {1: ["n2", "n3"]}


def test_a_job_that_needs_more_than_a_cheap_host_has_goes_to_a_dear_one() -> None:
    hosts = [HostView("cheap", 4, 1000, weight=1), HostView("dear", 16, 1000, weight=9)]
    got = run(
        hosts, [JobView(1, "q", cpus=8), JobView(2, "q", cpus=2)], AllocationStrategy.BEST_FIT
    )
    assert got == {1: ["dear"], 2: ["cheap"]}
