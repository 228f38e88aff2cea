"""Elastic hosts in the pure pass: resume just enough, within max_vcpus, and say so."""

from __future__ import annotations

from hpcbatch.core.scheduler import (
    AllocationStrategy,
    ComputeEnvView,
    HostView,
    JobView,
    QueueView,
    schedule,
)

NOW = 1000.0


def down(name: str, cpus: int = 4, weight: int = 1) -> HostView:
    return HostView(name, cpus, 0, available=False, power="POWERED_DOWN", weight=weight)


def ce(hosts: list[HostView], **kw: object) -> ComputeEnvView:
    return ComputeEnvView("ce", tuple(h.name for h in hosts), **kw)  # type: ignore[arg-type]


Q = QueueView("q", 1, compute_envs=("ce",))


def test_one_job_resumes_one_host_and_waits_with_the_reason() -> None:
    hosts = [down("n1"), down("n2"), down("n3")]
    plan = schedule(hosts, [Q], [JobView(1, "q")], compute_envs=[ce(hosts)], now=NOW)
    assert plan.starts == []
    assert plan.resume == ["n1"]
    assert plan.reasons[1] == "Resources: powering up n1 (since 0 s)"


def test_jobs_that_fit_on_a_host_being_resumed_wait_for_it_and_resume_nothing_more() -> None:
    hosts = [down("n1"), down("n2")]
    jobs = [JobView(i, "q", cpus=2) for i in range(1, 3)]
    plan = schedule(hosts, [Q], jobs, compute_envs=[ce(hosts)], now=NOW)
    assert plan.resume == ["n1"]
    up = [HostView("n1", 4, 0, available=False, power="POWERING_UP", powering_since=NOW - 12),
          down("n2")]  # fmt: skip
    plan = schedule(up, [Q], jobs, compute_envs=[ce(up)], now=NOW)
    assert plan.resume == []
    assert plan.reasons[1] == "Resources: powering up n1 (since 12 s)"


def test_max_vcpus_is_never_exceeded_under_a_burst() -> None:
    hosts = [down(f"n{i}") for i in range(1, 9)]
    jobs = [JobView(i, "q", cpus=4) for i in range(1, 51)]
    plan = schedule(hosts, [Q], jobs, compute_envs=[ce(hosts, max_vcpus=12)], now=NOW)
    assert len(plan.resume) == 3  # 3 x 4 CPUs = 12
    assert sum(1 for r in plan.reasons.values() if r.startswith("Resources: powering up")) == 3


def test_a_gang_resumes_as_many_hosts_as_it_has_nodes() -> None:
    hosts = [down("n1"), down("n2"), down("n3")]
    plan = schedule(hosts, [Q], [JobView(1, "q", nodes=2)], compute_envs=[ce(hosts)], now=NOW)
    assert plan.resume == ["n1", "n2"]
    assert plan.reasons[1].startswith("Resources: powering up n1, n2")


def test_up_hosts_first_then_cheaper_powered_down_unless_progressive() -> None:
    hosts = [HostView("dear", 4, 0, power="UP", weight=5), down("cheap", weight=1)]
    plan = schedule(hosts, [Q], [JobView(1, "q")], compute_envs=[ce(hosts)], now=NOW)
    assert plan.resume == ["cheap"] and plan.starts == []
    prog = ce(hosts, strategy=AllocationStrategy.BEST_FIT_PROGRESSIVE)
    plan = schedule(hosts, [Q], [JobView(1, "q")], compute_envs=[prog], now=NOW)
    assert plan.resume == [] and [p.host for _, ps in plan.starts for p in ps] == ["dear"]
    same = [HostView("up", 4, 0, power="UP"), down("off")]
    plan = schedule(same, [Q], [JobView(1, "q")], compute_envs=[ce(same)], now=NOW)
    assert plan.resume == [] and plan.starts


def test_a_failed_host_is_neither_resumed_nor_counted() -> None:
    hosts = [HostView("bad", 4, 0, available=False, power="OFF"), down("good")]
    plan = schedule(hosts, [Q], [JobView(1, "q")], compute_envs=[ce(hosts, max_vcpus=4)], now=NOW)
    assert plan.resume == ["good"]


def test_a_job_too_big_for_any_host_resumes_nothing() -> None:
    hosts = [down("n1"), down("n2")]
    plan = schedule(hosts, [Q], [JobView(1, "q", cpus=8)], compute_envs=[ce(hosts)], now=NOW)
    assert plan.resume == []
    assert plan.reasons[1].startswith("Resources:")
