"""Job definitions and queue states on the real sandbox: register, revise, submit, disable."""

from __future__ import annotations

import pytest

from hpcbatch.cli.submit import build_submission
from hpcbatch.client import ClientError
from hpcbatch.controller.app import Controller
from hpcbatch.core.directives import DirectiveError
from tests.integration.conftest import Api, until

pytestmark = pytest.mark.sshd


async def test_register_revise_submit_with_parameters(cluster: tuple[Controller, Api]) -> None:
    _c, api = cluster
    first = await api(
        "register",
        definition={
            "name": "greet",
            "command": ["sh", "-c", 'echo "$0 $1 $GREETING"', "Ref::who", "Ref::unknown"],
            "parameters": {"who": "world"},
            "environment": {"GREETING": "hi"},
            "cpus": 1,
            "retry_strategy": {"attempts": 2},
        },
    )
    assert first == {"name": "greet", "revision": 1, "arn": "greet:1"}
    second = await api(
        "register", definition={"name": "greet", "command": ["echo", "rev2", "Ref::who"]}
    )
    assert second["revision"] == 2
    # The latest active revision by default; an explicit one, with overrides.
    latest = await api.submit(definition="greet", parameters={"who": "you"})
    old = await api.submit(
        definition="greet:1", parameters={"who": "alice"}, env={"GREETING": "hello"}, cpus=2
    )
    done = {j["id"]: j for j in await api.wait(latest, old)}
    assert all(j["state"] == "SUCCEEDED" for j in done.values())
    assert (await api.logs(latest)).strip() == "rev2 you"
    # An unknown Ref:: stays as written, as in AWS Batch.
    assert (await api.logs(old)).strip() == "alice Ref::unknown hello"
    shown = await api("show", job_id=old)
    assert shown["definition"] == "greet:1" and shown["cpus"] == 2
    assert shown["request"]["retry"]["attempts"] == 2

    listed = await api("definitions")
    assert [d["arn"] for d in listed] == ["greet:1", "greet:2"]
    await api("deregister", ref="greet:2")
    assert [d["arn"] for d in await api("definitions")] == ["greet:1"]
    assert [d["status"] for d in await api("definitions", all=True)] == ["ACTIVE", "INACTIVE"]
    with pytest.raises(ClientError) as err:
        await api.submit(definition="greet:2")
    assert "deregistered" in err.value.message
    # Now the latest active revision is 1 again.
    again = await api.submit(definition="greet")
    (job,) = await api.wait(again)
    assert (await api.logs(again)).strip() == "world Ref::unknown hi"
    assert job["definition"] == "greet:1"


async def test_bad_definitions_are_refused_with_the_field(cluster: tuple[Controller, Api]) -> None:
    _c, api = cluster
    with pytest.raises(ClientError) as err:
        await api("register", definition={"name": "x", "command": ["true"], "cpus": 0})
    assert "cpus" in err.value.message
    with pytest.raises(ClientError) as err:
        await api("register", definition={"name": "x"})
    assert "exactly one of 'command'" in err.value.message
    with pytest.raises(ClientError) as err:
        await api("register", definition={"name": "x", "script": "true", "colour": "red"})
    assert "colour" in err.value.message
    with pytest.raises(ClientError) as err:
        await api.submit(definition="nope")
    assert err.value.kind == "not_found" and "nope" in err.value.message
    assert await api("definitions", all=True) == []


async def test_cli_definition_submission_sends_only_overrides() -> None:
    sub = build_submission(
        ["--definition", "sim:3", "--parameters", "a=1,b=2", "-c", "4", "--", "prog", "x"],
        None,
    )
    req = sub.request
    assert req["definition"] == "sim:3" and req["parameters"] == {"a": "1", "b": "2"}
    assert req["cpus"] == 4 and req["command"] == ["prog", "x"]
    assert "script" not in req and "env" not in req


async def test_propagate_tags_from_the_command_line(cluster: tuple[Controller, Api]) -> None:
    """`--propagate-tags` / `--no-propagate-tags` over the definition's propagate_tags
    (AWS Batch's SubmitJob propagateTags over the definition's), through the CLI's parser
    and the real controller; without `--definition` they are refused, naming the flag."""
    _c, api = cluster
    await api("register", definition={"name": "tagged", "command": ["true"],
                                      "tags": {"project": "climate", "cost": "7"},
                                      "propagate_tags": True})  # fmt: skip

    async def tags_of(*argv: str) -> dict[str, str]:
        request = build_submission(["--definition", "tagged", *argv], None).request
        job_id = await api.submit(**request)
        await api.wait(job_id)
        return dict((await api("show", job_id=job_id)).get("tags") or {})

    assert await tags_of() == {"project": "climate", "cost": "7"}
    assert await tags_of("--no-propagate-tags", "--tag", "run=1") == {"run": "1"}
    await api("register", definition={"name": "tagged", "command": ["true"],
                                      "tags": {"project": "climate"}})  # fmt: skip
    assert await tags_of() == {}
    assert await tags_of("--propagate-tags", "--tag", "project=ocean") == {"project": "ocean"}
    with pytest.raises(DirectiveError, match="--\\[no-\\]propagate-tags needs --definition"):
        build_submission(["--no-propagate-tags", "--wrap", "true"], None)


async def test_disabled_queue_keeps_jobs_and_starts_none(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    await api("queue_update", queue="batch", state="DISABLED")
    job = await api.submit(script="#!/bin/sh\necho ran\n", queue="batch")
    await until(
        lambda: (c.jobs.live(job).reason or "").startswith("QueueDisabled"),
        what="a QueueDisabled reason",
    )
    (shown,) = await api("jobs", ids=[job])
    assert shown["state"] == "RUNNABLE"
    queues = {q["name"]: q for q in await api("queues")}
    assert queues["batch"]["state"] == "DISABLED"
    await api("queue_update", queue="batch", state="ENABLED")
    (done,) = await api.wait(job)
    assert done["state"] == "SUCCEEDED"


async def test_retries_follow_the_strategy(cluster: tuple[Controller, Api]) -> None:
    _c, api = cluster
    flaky = '#!/bin/sh\necho "attempt $HPCBATCH_ATTEMPT"\n[ "$HPCBATCH_ATTEMPT" -ge 2 ] || exit 7\n'
    retried = await api.submit(script=flaky, retry={"attempts": 3})
    stopped = await api.submit(
        script=flaky,
        retry={"attempts": 3, "evaluate_on_exit": [{"on_exit_code": "7", "action": "EXIT"}]},
    )
    once = await api.submit(script="#!/bin/sh\nexit 5\n", retry={"attempts": 2})
    jobs = {j["id"]: j for j in await api.wait(retried, stopped, once)}
    assert (jobs[retried]["state"], jobs[retried]["attempt"]) == ("SUCCEEDED", 2)
    assert (await api.logs(retried)).strip() == "attempt 2"
    shown = await api("show", job_id=retried)
    assert [a["exit_code"] for a in shown["attempts"]] == [7, 0]
    assert any(
        (t["reason"] or "").startswith("Retry: attempt 1 failed") for t in shown["transitions"]
    )
    assert (jobs[stopped]["state"], jobs[stopped]["attempt"]) == ("FAILED", 1)
    assert (jobs[once]["state"], jobs[once]["attempt"], jobs[once]["exit_code"]) == ("FAILED", 2, 5)
    with pytest.raises(ClientError) as err:
        await api.submit(retry={"attempts": 11})
    assert "attempts" in err.value.message
    with pytest.raises(ClientError) as err:
        await api.submit(retry={"evaluate_on_exit": [{"on_exit_code": "x1", "action": "RETRY"}]})
    assert "on_exit_code" in err.value.message or "onExitCode" in err.value.message


async def test_multi_node_definition(cluster: tuple[Controller, Api]) -> None:
    _c, api = cluster
    await api(
        "register",
        definition={
            "name": "pair",
            "num_nodes": 2,
            "launch_mode": "all",
            "command": ["sh", "-c", 'echo "node $HPCBATCH_NODE_INDEX of $HPCBATCH_NUM_NODES"'],
        },
    )
    (shown,) = await api("definitions", name="pair")
    assert shown["definition"]["nodes"] == 2
    job = await api.submit(definition="pair")
    (done,) = await api.wait(job)
    assert done["state"] == "SUCCEEDED" and done["nodes"] == 2 and len(done["hosts"]) == 2
    node1 = await api("logs", job_id=job, node=1)
    assert node1["data"].strip() == "node 1 of 2"
