"""Limits per user or share identifier within a queue, with `UserLimit:` reasons."""

from __future__ import annotations

from hpcbatch.core.records import Placement
from hpcbatch.core.scheduler import HostView, JobView, QueueView, RunningView, schedule
from hpcbatch.core.views import UserLimits

HOSTS = [HostView("h1", 16, 10_000, gpus=(0, 1, 2, 3)), HostView("h2", 16, 10_000)]


def started(q: QueueView, jobs: list[JobView], **kw: object) -> tuple[list[int], dict[int, str]]:
    plan = schedule(HOSTS, [q], jobs, **kw)  # type: ignore[arg-type]
    return [j for j, _ in plan.starts], plan.reasons


def test_max_running_per_user_holds_and_names_the_limit() -> None:
    q = QueueView("q", 1, hosts=("h1", "h2"), user_limits=UserLimits(max_running=2))
    jobs = [JobView(i, "q", user="alice") for i in range(1, 5)] + [JobView(9, "q", user="bob")]
    got, why = started(q, jobs)
    assert got == [1, 2, 9]
    assert why[3] == (
        "UserLimit: user alice may hold at most 2 jobs at once in queue q "
        "(2 held, this job needs 1)"
    )


def test_running_jobs_count_and_cpus_gpus_nodes_limits() -> None:
    limits = UserLimits(max_vcpus=4, max_gpus=1, max_nodes=2)
    q = QueueView("q", 1, hosts=("h1", "h2"), user_limits=limits)
    running = [RunningView(100, "q", (Placement("h2", 3, 0),), user="alice")]
    jobs = [
        JobView(1, "q", user="alice", cpus=2),  # 3 + 2 > 4
        JobView(2, "q", user="alice", cpus=1, gpus=2),  # 2 GPUs > 1
        JobView(3, "q", user="alice", cpus=1, gpus=1),  # fits: 4 vCPUs, 1 GPU, 2 nodes
        JobView(4, "q", user="alice", cpus=1),  # 5 vCPUs > 4
    ]
    got, why = started(q, jobs, running=running)
    assert got == [3]
    assert why[1].startswith("UserLimit: user alice may hold at most 4 vCPUs")
    assert why[2].startswith("UserLimit: user alice may hold at most 1 GPUs")
    assert why[4].startswith("UserLimit: user alice may hold at most 4 vCPUs")


def test_limits_per_share_identifier() -> None:
    q = QueueView("q", 1, hosts=("h1",), user_limits=UserLimits(per="share", max_running=1))
    jobs = [JobView(1, "q", user="a", share_id="p"), JobView(2, "q", user="b", share_id="p"),
            JobView(3, "q", user="c")]  # fmt: skip
    got, why = started(q, jobs)
    assert got == [1, 3]
    assert why[2].startswith("UserLimit: share p may hold at most 1 jobs")


def test_a_job_bigger_than_a_user_limit_is_never_within_it() -> None:
    from hpcbatch.core.limits import never_within

    limits = UserLimits(max_vcpus=4, max_gpus=1, max_nodes=2)
    assert never_within(JobView(1, "q", cpus=4, gpus=1, nodes=1), "q", limits) is None
    assert never_within(JobView(1, "q", cpus=4, nodes=2), "q", None) is None
    assert never_within(JobView(1, "q", cpus=3, nodes=2), "q", limits) == (
        "needs 6 vCPUs; queue q allows one user at most 4 at once (max_vcpus_per_user = 4)"
    )
    assert "2 GPUs" in str(never_within(JobView(1, "q", gpus=2), "q", limits))
    share = UserLimits(per="share", max_nodes=2)
    why = never_within(JobView(1, "q", nodes=3), "q", share)
    assert why == (
        "needs 3 nodes; queue q allows one share identifier at most 2 at once"
        " (max_nodes_per_user = 2)"
    )
    # Jobs that are merely many are not refused: max_running only ever makes them wait.
    assert never_within(JobView(1, "q"), "q", UserLimits(max_running=1)) is None
