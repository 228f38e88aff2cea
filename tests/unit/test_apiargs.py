"""The API's argument models: what each operation takes, and how a wrong argument is told.

The wording is what users see (`hpcbatch` prints it as is), so it is checked
word for word: the operation, the argument, and what it must be.
"""

from __future__ import annotations

from typing import Any

import pytest

from hpcbatch.controller.apiargs import (
    CancelArgs,
    DefinitionsArgs,
    JobsArgs,
    LogsArgs,
    NoArgs,
    OpArgs,
    ShowArgs,
    SubmitArgs,
    WaitArgs,
    parse_args,
)
from hpcbatch.controller.callers import ApiError
from hpcbatch.controller.handlers_admin import AdminHandlers
from hpcbatch.controller.handlers_definitions import DefinitionHandlers
from hpcbatch.controller.handlers_jobs import JobHandlers

BIG = 2**63
IDS = "must be a list of job ids (whole numbers)"
NUMBER = "must be a number from 0 to 1e9"


@pytest.mark.parametrize(
    ("op", "model", "args", "message"),
    [
        ("show", ShowArgs, {"job_id": -1}, "show: job_id must be a whole number from 0"),
        ("logs", LogsArgs, {"offset": BIG}, "logs: offset must be a whole number from 0"),
        ("logs", LogsArgs, {"node": True}, "logs: node must be a whole number from 0"),
        ("logs", LogsArgs, {"node": "1"}, "logs: node must be a whole number from 0"),
        ("logs", LogsArgs, {"attempt": 1.0}, "logs: attempt must be a whole number from 0"),
        ("jobs", JobsArgs, {"user": 7}, "jobs: user must be a string of at most 4096 characters"),
        ("jobs", JobsArgs, {"name": "x" * 4097},
         "jobs: name must be a string of at most 4096 characters"),
        ("jobs", JobsArgs, {"ids": [1, "2"]}, f"jobs: ids {IDS}"),
        ("jobs", JobsArgs, {"ids": 3}, f"jobs: ids {IDS}"),
        ("jobs", JobsArgs, {"states": ["RUNNING", 1]}, "jobs: states must be a list of strings"),
        ("jobs", JobsArgs, {"all": 1}, "jobs: all must be true or false"),
        ("wait", WaitArgs, {"timeout_s": float("nan")}, f"wait: timeout_s {NUMBER}"),
        ("wait", WaitArgs, {"timeout_s": -1}, f"wait: timeout_s {NUMBER}"),
        ("wait", WaitArgs, {"timeout_s": True}, f"wait: timeout_s {NUMBER}"),
        ("submit", SubmitArgs, {"request": ["x"]}, "submit: request must be an object"),
        ("cancel", CancelArgs, {"job_ids": [1, "12_7", "x" * 65]},
         "cancel: job_ids must be a list of job ids (N or ARRAY_INDEX)"),
        ("cancel", CancelArgs, {"job_ids": [False]},
         "cancel: job_ids must be a list of job ids (N or ARRAY_INDEX)"),
    ],
)  # fmt: skip
def test_a_wrong_argument_is_named_with_what_it_must_be(
    op: str, model: type[OpArgs], args: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiError) as err:
        parse_args(op, model, {"op": op, "id": 1, **args})
    assert (err.value.kind, err.value.message) == ("bad_request", message)


def test_an_argument_the_operation_does_not_take_is_refused_by_name() -> None:
    with pytest.raises(ApiError) as err:
        parse_args("jobs", JobsArgs, {"op": "jobs", "state": "RUNNING"})
    assert err.value.message == (
        "jobs: unknown argument 'state' "
        "(it takes: states, ids, array_parent, user, queue, name, limit, all, tags, priority)"
    )
    with pytest.raises(ApiError) as err:
        parse_args("ping", NoArgs, {"op": "ping", "verbose": True})
    assert err.value.message == "ping: unknown argument 'verbose' (it takes: none)"


def test_null_means_absent_and_the_envelope_is_not_an_argument() -> None:
    args = parse_args("definitions", DefinitionsArgs, {"op": "x", "id": None, "name": None})
    assert args == DefinitionsArgs()
    cancel = parse_args("cancel", CancelArgs, {"job_ids": [12, "12_7"], "reason": None})
    assert cancel.job_ids == [12, "12_7"] and cancel.reason is None
    wait = parse_args("wait", WaitArgs, {"job_ids": [0, BIG - 1], "timeout_s": 1e9})
    assert wait.job_ids == [0, BIG - 1] and wait.timeout_s == 1e9


def test_the_handler_tables_cover_the_protocol_once() -> None:
    none: Any = None
    tables = [
        JobHandlers(none, none, none, none).table(),
        AdminHandlers(none, none, none).table(),
        DefinitionHandlers(none).table(),
    ]
    names = [name for table in tables for name in table]
    assert len(names) == len(set(names))
    assert set(names) == {
        "ping", "status", "stats", "submit", "submit_argv", "jobs", "show", "cancel", "logs",
        "hosts", "drain", "resume", "down", "queues", "shares", "wait", "register",
        "definitions", "definition", "deregister", "queue_update", "shutdown", "acct",
    }  # fmt: skip
