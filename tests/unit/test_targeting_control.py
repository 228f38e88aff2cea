"""The pure parts of job control and host targeting (issue 20): constraint
expressions, GPU types from probed names, fabric kinds, begin/deadline times,
holds and updates, priority ordering, and the scheduler applying them."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from hpcbatch.core.directives import merge, parse_args, parse_script
from hpcbatch.core.jobcontrol import (
    ControlError,
    deadline_due,
    deadline_reason,
    decide_hold,
    decide_release,
    decide_update,
    held_reason,
    order_key,
    parse_time_spec,
)
from hpcbatch.core.scheduler import HostView, JobView, QueueView, infeasible, schedule
from hpcbatch.core.states import JobState
from hpcbatch.core.targeting import (
    ConstraintError,
    evaluate,
    fabric_matches,
    gpu_type_of,
    host_features,
    make_target,
    parse_constraint,
)

# --------------------------------------------------------------------------- constraints


@pytest.mark.parametrize(
    ("text", "features", "ok"),
    [
        ("a", {"a"}, True),
        ("a&b", {"a"}, False),
        ("a,b", {"a", "b"}, True),
        ("a|b", {"b"}, True),
        ("a&(b|c)", {"a", "c"}, True),
        ("a&(b|c)", {"b", "c"}, False),
        ("a|b&c", {"a"}, True),  # & binds tighter than |
        ("(a|b)&c", {"a"}, False),
        ("zone=east", {"zone=east"}, True),
    ],
)
def test_constraint_expressions(text: str, features: set[str], ok: bool) -> None:
    assert evaluate(parse_constraint(text), frozenset(features)) is ok


@pytest.mark.parametrize(
    ("text", "words"),
    [("", "empty"), ("a&", "ends where"), ("(a|b", "not closed"), ("a)", "unexpected"),
     ("a!b", "unexpected '!'"), ("|a", "expected a feature")],
)  # fmt: skip
def test_bad_constraints_say_why(text: str, words: str) -> None:
    with pytest.raises(ConstraintError, match=words):
        parse_constraint(text)


def test_host_features_are_features_and_labels() -> None:
    got = host_features(("nvlink",), {"zone": "east"})
    assert got == {"nvlink", "zone=east", "zone"}


@pytest.mark.parametrize(
    ("name", "kind"),
    [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA A100-SXM4-80GB", "a100"),
     ("Tesla V100-PCIE-16GB", "v100"), ("NVIDIA L40S", "l40s"), ("NVIDIA RTX A6000", "a6000"),
     ("", None)],
)  # fmt: skip
def test_gpu_type_from_the_probed_name(name: str, kind: str | None) -> None:
    assert gpu_type_of(name) == kind


def test_fabric_kinds() -> None:
    assert (
        fabric_matches("ib", "ib-a") and fabric_matches("ib", "ib") and fabric_matches("ib", "ib_2")
    )
    assert not fabric_matches("ib", "ibx") and not fabric_matches("ib-a", "ib-b")
    assert fabric_matches("any", "efa") and not fabric_matches("any", None)


# --------------------------------------------------------------------------- times


def test_begin_times() -> None:
    now = time.mktime((2026, 12, 7, 12, 0, 0, 0, 0, -1))
    assert parse_time_spec("now", now) == now
    assert parse_time_spec("now+1hour", now) == now + 3600
    assert parse_time_spec("now+30", now) == now + 30
    assert parse_time_spec("+2days", now) == now + 2 * 86400
    assert parse_time_spec("16:00", now) == now + 4 * 3600
    assert parse_time_spec("11:00", now) == now + 23 * 3600  # already past: tomorrow
    assert parse_time_spec("teatime", now) == now + 4 * 3600
    assert parse_time_spec("tomorrow", now) == now + 12 * 3600
    iso = dt.datetime(2026, 12, 24, 8, 30).astimezone().timestamp()
    assert parse_time_spec("2026-12-24T08:30", now) == iso
    assert parse_time_spec("12/24/26", now) == iso - 8.5 * 3600
    for bad, words in (("now+3parsecs", "unknown unit"), ("25:00", "not a time of day"),
                       ("2026-02-30", "not a date"), ("soon", "not understood")):  # fmt: skip
        with pytest.raises(ControlError, match=words):
            parse_time_spec(bad, now)


def test_directives_read_the_new_options() -> None:
    opts, _ = parse_script(
        "#!/bin/sh\n#SBATCH -w node[1-2] -x node3 -C 'a&b' --gres=gpu:H100:2\n"
        "#SBATCH --hold --priority=5 --nice --no-requeue --begin=now+60\ntrue\n",
        "job.sh",
    )
    values = merge(opts, parse_args([]))
    assert values["nodelist"] == "node[1-2]" and values["exclude"] == "node3"
    assert values["constraint"] == "a&b"
    assert (values["gpus"], values["gpu_type"]) == (2, "h100")
    assert values["hold"] is True and values["priority"] == 5 and values["nice"] == 100
    assert values["requeue"] is False
    assert abs(float(values["begin"]) - (time.time() + 60)) < 5  # type: ignore[arg-type]
    assert opts.warnings == []
    gpus = merge(parse_args(["--gpus=a100:4", "-N", "2"]), parse_args([]))
    assert (gpus["gpus"], gpus["gpu_type"]) == (2, "a100")


def test_bad_targets_name_the_line() -> None:
    from hpcbatch.core.directives import DirectiveError

    with pytest.raises(DirectiveError, match=r"job.sh:2: -C: constraint 'a&\(b'"):
        parse_script("#!/bin/sh\n#SBATCH -C a&(b\ntrue\n", "job.sh")
    with pytest.raises(DirectiveError, match=r"job.sh:2: --nodelist"):
        parse_script("#!/bin/sh\n#SBATCH --nodelist=n[1-\ntrue\n", "job.sh")
    with pytest.raises(DirectiveError, match=r"job.sh:2: --begin: time 'soon'"):
        parse_script("#!/bin/sh\n#SBATCH --begin=soon\ntrue\n", "job.sh")


# --------------------------------------------------------------------------- holds, updates


def test_holds() -> None:
    assert decide_hold(None, admin=False) == "user"
    assert decide_hold("user", admin=True) == "admin"
    with pytest.raises(ControlError, match="administrator"):
        decide_hold("admin", admin=False)
    decide_release("user", admin=False)
    with pytest.raises(ControlError, match="only an administrator"):
        decide_release("admin", admin=False)
    decide_release("admin", admin=True)
    with pytest.raises(ControlError, match="not held"):
        decide_release(None, admin=True)
    assert (held_reason("user") or "").startswith("JobHeldUser:")
    assert (held_reason("admin") or "").startswith("JobHeldAdmin:")


def test_updates() -> None:
    req = {"name": "a", "time_limit_s": 600}
    assert decide_update(req, {"name": "b"}, waiting=True, admin=False)["name"] == "b"
    with pytest.raises(ControlError, match="only be updated while the job waits"):
        decide_update(req, {"name": "b"}, waiting=False, admin=False)
    lower = decide_update(req, {"time_limit_s": 60}, waiting=False, admin=False)
    assert lower["time_limit_s"] == 60
    with pytest.raises(ControlError, match="only be lowered"):
        decide_update(req, {"time_limit_s": 6000}, waiting=False, admin=False)
    assert decide_update(req, {"time_limit_s": 6000}, waiting=False, admin=True)
    with pytest.raises(ControlError, match="negative nice"):
        decide_update(req, {"nice": -1}, waiting=True, admin=False)
    with pytest.raises(ControlError, match="cannot be updated"):
        decide_update(req, {"cpus": 4}, waiting=True, admin=True)


def test_deadlines_of_waiting_and_running_jobs() -> None:
    t = 1_000_000.0
    # Waiting: looked at when, started then, its limit would run past the deadline.
    assert deadline_due(JobState.PENDING, t + 100, 60) == t + 40
    assert deadline_due(JobState.RUNNABLE, t + 100, None) == t + 100
    assert deadline_reason(JobState.PENDING, t + 100, 60, t + 39) is None
    why = deadline_reason(JobState.PENDING, t + 100, 60, t + 40)
    assert why is not None and why.startswith("DeadLine: it could not end by"), why
    assert "time limit 1:00" in why
    # Started: ended at the deadline itself, whatever its limit.
    assert deadline_due(JobState.RUNNING, t + 100, 60) == t + 100
    assert deadline_reason(JobState.RUNNING, t + 100, 60, t + 99) is None
    why = deadline_reason(JobState.STARTING, t + 100, None, t + 100)
    assert why is not None and why.startswith("DeadLine: still running at its deadline"), why
    assert deadline_reason(JobState.FAILED, t, 60, t + 1000) is None


# --------------------------------------------------------------------------- the scheduler


def _host(name: str, **kw: object) -> HostView:
    return HostView(name, 8, 16_000, **kw)  # type: ignore[arg-type]


def test_priority_then_nice_then_submission_order() -> None:
    assert sorted([(0, 0), (0, 5), (3, 100)], key=lambda pn: order_key(*pn)) == [
        (3, 100), (0, 0), (0, 5)
    ]  # fmt: skip
    jobs = [
        JobView(1, "q", cpus=8, order=order_key(0, 50)),
        JobView(2, "q", cpus=8),
        JobView(3, "q", cpus=8, order=order_key(5, 0)),
        JobView(4, "q", cpus=8),
    ]
    plan = schedule([_host("a"), _host("b")], [QueueView("q", 1, ("a", "b"))], jobs)
    assert [job for job, _ in plan.starts] == [3, 2]


def test_targets_in_the_scheduler() -> None:
    hosts = [
        _host("a", fabric="ib-a"),
        _host("b", fabric="ib-b", features=frozenset({"nvlink"})),
        _host("c", fabric="ib-b", gpus=(0, 1), gpu_type="h100"),
        _host("d", fabric="efa-1", gpus=(0,), gpu_type="a100"),
    ]
    q = QueueView("q", 1, ("a", "b", "c", "d"))

    def where(**kw: object) -> list[str]:
        plan = schedule(hosts, [q], [JobView(1, "q", **kw)])  # type: ignore[arg-type]
        return [p.host for _, ps in plan.starts for p in ps]

    assert where(target=make_target(nodelist=("c",))) == ["c"]
    assert where(target=make_target(exclude=("a", "b", "c"))) == ["d"]
    assert where(target=make_target(constraint="nvlink")) == ["b"]
    assert where(gpus=1, target=make_target(gpu_type="H100")) == ["c"]
    assert where(gpus=1, target=make_target(gpu_type="a100")) == ["d"]
    assert where(nodes=2, fabric="ib") == ["b", "c"]
    assert where(nodes=2, target=make_target(nodelist=("a", "d"))) == ["a", "d"]
    assert where(nodes=2, fabric="ib-b", target=make_target(nodelist=("c",))) == ["c", "b"]
    never = JobView(1, "q", gpus=1, target=make_target(gpu_type="v100"))
    assert "no host in queue q matches (GPU type v100)" in (infeasible(never, hosts) or "")
    wrong = JobView(1, "q", nodes=2, fabric="ib-a")
    assert "largest island" in (infeasible(wrong, hosts) or "")


def test_begin_and_deadline_in_the_scheduler() -> None:
    q = QueueView("q", 1, ("a",))
    jobs = [JobView(1, "q", begin=1000.0), JobView(2, "q", deadline=100.0, time_limit_s=60),
            JobView(3, "q", deadline=100.0, time_limit_s=10)]  # fmt: skip
    plan = schedule([_host("a")], [q], jobs, now=50.0)
    assert plan.reasons[1].startswith("BeginTime: not before ")
    assert plan.wake_at == 1000.0
    assert plan.expired[2].startswith("DeadLine: ")
    assert [j for j, _ in plan.starts] == [3]
    later = schedule([_host("a")], [q], jobs[:1], now=1000.0)
    assert [j for j, _ in later.starts] == [1]


def test_a_definition_takes_targets_and_control_and_warns_about_the_rest() -> None:
    from hpcbatch.cli.submit import build_submission

    sub = build_submission(
        ["--definition", "sim", "--begin", "now+60", "-w", "node1", "--nice", "--image", "x"],
        None,
    )
    assert sub.request["nodelist"] == "node1" and sub.request["nice"] == 100
    assert "begin" in sub.request and "image" not in sub.request
    assert sub.warnings == ["command line: ignored: --container-image (a job definition sets it)"]
