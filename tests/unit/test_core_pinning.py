"""CPU pinning in the scheduler (issue 15): core numbers per host, pure.

Each placement takes the lowest free core numbers of its host; running jobs'
cores (`HostView.used_cores`, from their stored attempts) are never handed out
again, so a restarted controller pins around what is still running.
"""

from __future__ import annotations

from hpcbatch.core.scheduler import HostView, JobView, QueueView, schedule


def _plan(host: HostView, jobs: list[JobView]) -> dict[int, tuple[int, ...]]:
    plan = schedule([host], [QueueView(name="q", priority=1, hosts=(host.name,))], jobs)
    return {job_id: placements[0].cores for job_id, placements in plan.starts}


def test_two_one_cpu_jobs_on_one_host_get_disjoint_cores() -> None:
    cores = _plan(HostView(name="h", cpus=4, memory_mb=1000),
                  [JobView(id=1, queue="q", cpus=1), JobView(id=2, queue="q", cpus=1)])  # fmt: skip
    assert cores == {1: (0,), 2: (1,)}


def test_cores_held_by_running_jobs_are_not_given_again() -> None:
    host = HostView(name="h", cpus=4, memory_mb=1000, used_cpus=2, used_cores=frozenset({0, 2}))
    assert _plan(host, [JobView(id=1, queue="q", cpus=2)]) == {1: (1, 3)}


def test_an_exclusive_job_gets_every_core() -> None:
    cores = _plan(HostView(name="h", cpus=3, memory_mb=1000),
                  [JobView(id=1, queue="q", cpus=1, exclusive=True)])  # fmt: skip
    assert cores == {1: (0, 1, 2)}


def test_without_enough_numbered_cores_the_job_is_not_pinned() -> None:
    # Running jobs of an older controller hold CPUs without core numbers.
    host = HostView(name="h", cpus=2, memory_mb=1000, used_cpus=1, used_cores=frozenset({0, 1}))
    assert _plan(host, [JobView(id=1, queue="q", cpus=1)]) == {1: ()}
