"""core.jobspec: the typed request, built from the JSON the store keeps."""

from __future__ import annotations

from hpcbatch.core.jobspec import JobSpec
from hpcbatch.core.records import JobRecord
from hpcbatch.core.retry import Action
from hpcbatch.core.states import JobState
from hpcbatch.models import JobRequest


def test_a_validated_request_reads_back_typed() -> None:
    raw = JobRequest.model_validate(
        {
            "script": "#!/bin/sh\n",
            "nodes": 2,
            "launch_mode": "all",
            "main_node": 1,
            "time_limit_s": 90,
            "env": {"A": "1"},
            "retry": {
                "attempts": 3,
                "evaluate_on_exit": [{"on_exit_code": "4*", "action": "exit"}],
            },
            "warn_signal": {"name": "USR1", "before_s": 30},
        }
    ).model_dump(mode="json")
    spec = JobSpec.from_json(raw)
    assert spec.raw is raw  # the JSON is kept as it is, for the store and `show`
    assert (spec.nodes, spec.is_gang, spec.launch_mode, spec.main_node) == (2, True, "all", 1)
    assert (spec.time_limit_s, dict(spec.env), spec.image, spec.mounts) == (
        90,
        {"A": "1"},
        None,
        (),
    )
    assert spec.retry is not None and spec.retry.attempts == 3
    assert spec.retry.rules[0].action == Action.EXIT and spec.retry.rules[0].on_exit_code == "4*"
    assert spec.warn_signal is not None and spec.warn_signal.before_s == 30.0
    assert not spec.warn_signal.batch_only


def test_an_old_or_empty_request_gets_the_defaults() -> None:
    spec = JobSpec.from_json({})
    assert (spec.nodes, spec.cpus, spec.gpus, spec.memory_mb) == (1, 1, 0, None)
    assert (spec.main_node, spec.launch_mode, spec.exclusive, spec.is_gang) == (
        0,
        "main",
        False,
        False,
    )
    assert spec.retry is None and spec.warn_signal is None and spec.image is None


def test_a_record_builds_its_spec_once_and_again_when_its_request_is_replaced() -> None:
    job = JobRecord(1, "j", "alice", 1, "default", JobState.PENDING, None, {}, 0.0)
    first = job.spec
    assert job.spec is first and first.nodes == 1
    job.request = {"nodes": 3, "script": "x"}  # an array child given its parent's request
    assert job.spec is not first and job.spec.nodes == 3 and job.spec.raw is job.request
