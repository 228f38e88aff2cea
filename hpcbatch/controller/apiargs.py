"""The API operations' arguments as strict models, and the handler contract.

A client may send anything. Each operation names a model of its arguments
(pydantic, strict, `extra="forbid"`); the server validates a request against
it before any handler runs, so a number where a list belongs, an integer too
large for SQLite, or an argument the operation does not take is refused with
a `bad_request` that names the argument, never surfacing later as an internal
error or a failed store write. Null means absent. Bodies that strict models of
their own check later (a job request, a job definition) are only required to
be objects here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpcbatch.controller.callers import ApiError, Caller

INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # what SQLite stores
MAX_TEXT = 4096
MAX_LIST = 1_000_000

# The kinds of value. Each is optional (null means absent) and carries, as its
# description, the words an error uses for it.
_Id = Annotated[int, Field(ge=0, le=INT_MAX)]
_Text = Annotated[str, Field(max_length=MAX_TEXT)]
_Target = _Id | Annotated[str, Field(max_length=64)]
JobId = Annotated[_Id | None, Field(description="a whole number from 0")]
Text = Annotated[_Text | None, Field(description=f"a string of at most {MAX_TEXT} characters")]
Seconds = Annotated[
    Annotated[int | float, Field(ge=0, le=1e9)] | None,
    Field(description="a number from 0 to 1e9"),  # NaN fails both bounds
]
Body = Annotated[dict[str, Any] | None, Field(description="an object")]
Flag = Annotated[bool | None, Field(description="true or false")]
JobIds = Annotated[
    Annotated[list[_Id], Field(max_length=MAX_LIST)] | None,
    Field(description="a list of job ids (whole numbers)"),
]
Texts = Annotated[
    Annotated[list[_Text], Field(max_length=MAX_LIST)] | None,
    Field(description="a list of strings"),
]
Targets = Annotated[
    Annotated[list[_Target], Field(max_length=MAX_LIST)] | None,
    Field(description="a list of job ids (N or ARRAY_INDEX)"),
]


class OpArgs(BaseModel):
    """The arguments of one operation; every one optional unless a model says so."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class NoArgs(OpArgs):
    pass


class SubmitArgs(OpArgs):
    request: Body = None
    warnings: Texts = None  # the CLI's own warnings, shown by the CLI
    as_user: Text = None


class SubmitArgvArgs(OpArgs):
    """`submit_argv`: `hpcbatch submit`'s arguments as typed, parsed here (`cli.quick`).

    `script` is the text of the file `script_for` names (its resolved path in
    `script_realpath`) and `env` the submitter's environment, each sent once the
    controller has asked for it."""

    argv: Annotated[list[str], Field(max_length=MAX_LIST, description="a list of strings")]
    cwd: Annotated[str, Field(max_length=MAX_TEXT, description="a directory path")]
    env: Annotated[dict[str, str] | None, Field(description="an object of strings")] = None
    umask: Annotated[int | None, Field(ge=0, le=0o777, description="a umask")] = None
    stdin_piped: Flag = None
    script: Annotated[str | None, Field(description="a string")] = None
    script_for: Text = None
    script_realpath: Text = None


class JobsArgs(OpArgs):
    states: Texts = None
    ids: JobIds = None
    array_parent: JobId = None
    user: Text = None
    queue: Text = None
    name: Text = None
    limit: JobId = None
    all: Flag = None
    tags: Body = None  # only jobs with all these tags (key -> value)
    priority: Flag = None  # each active job's priority as the scheduler sees it


class AcctArgs(OpArgs):
    """`acct`: finished and running jobs in a time window, with what they used."""

    start: float | None = None
    end: float | None = None
    states: Texts = None
    ids: JobIds = None
    user: Text = None
    queue: Text = None
    name: Text = None
    all_users: Flag = None
    per_node: Flag = None
    limit: JobId = None
    tags: Body = None  # only jobs with all these tags (key -> value)


class ShowArgs(OpArgs):
    job_id: JobId = None


class CancelArgs(OpArgs):
    job_ids: Targets = None
    reason: Text = None
    user: Text = None
    queue: Text = None
    name: Text = None
    states: Texts = None


class ControlArgs(OpArgs):
    """hold, release, requeue: the jobs (N, ARRAY_INDEX, or an array's id: its children)."""

    job_ids: Targets = None


class RequeueArgs(ControlArgs):
    """requeue: the jobs, running or finished; `hold`: held when back (requeuehold)."""

    hold: bool | None = None


class UpdateArgs(OpArgs):
    """update: one job and the fields to change (core.jobcontrol.UPDATABLE)."""

    job_id: Annotated[_Target, Field(description="a job id (N or ARRAY_INDEX)")]
    changes: Body = None


class LogsArgs(OpArgs):
    job_id: JobId = None
    stream: Text = None
    offset: JobId = None
    node: JobId = None
    attempt: JobId = None
    limit: JobId = None


class HostArgs(OpArgs):
    host: Text = None
    reason: Text = None


class WaitArgs(OpArgs):
    job_ids: JobIds = None
    timeout_s: Seconds = None


class RegisterArgs(OpArgs):
    definition: Body = None


class DefinitionsArgs(OpArgs):
    name: Text = None
    all: Flag = None


class DefinitionRefArgs(OpArgs):
    ref: Text = None


class SharesArgs(OpArgs):
    queue: str | None = Field(default=None, max_length=64)


class QueueUpdateArgs(OpArgs):
    queue: Text = None
    state: Text = None
    reason: Text = None


InventoryKind = Annotated[
    Literal["queues", "compute_environments", "hosts"] | None,
    Field(description='one of "queues", "compute_environments", "hosts"'),
]


class InventoryArgs(OpArgs):
    """Live administration (docs/operations.md): an entry of the inventory, by kind."""

    kind: InventoryKind = None
    name: Text = None
    entry: Body = None  # create: the whole entry, as the inventory's TOML would hold it
    fields: Body = None  # update: the fields to set
    unset: Texts = None  # update: the fields to return to their default
    join: Texts = None  # create a host: compute environments it joins
    reason: Text = None


A = TypeVar("A", bound=OpArgs)


@dataclass(frozen=True, slots=True)
class Operation(Generic[A]):
    """One operation of the API: the model of its arguments and the handler that runs it."""

    args: type[A]
    run: Callable[[A, Caller], Awaitable[Any]]

    async def __call__(self, op: str, msg: Mapping[str, Any], caller: Caller) -> Any:
        return await self.run(parse_args(op, self.args, msg), caller)


ENVELOPE = ("op", "id")  # the request's own keys, not an operation's arguments


def parse_args(op: str, model: type[A], msg: Mapping[str, Any]) -> A:
    """The arguments of a request, or a bad_request ApiError naming the first wrong one."""
    try:
        return model.model_validate({k: v for k, v in msg.items() if k not in ENVELOPE})
    except ValidationError as exc:
        raise ApiError("bad_request", _first_error(op, model, exc)) from None


def _first_error(op: str, model: type[OpArgs], exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = str(err["loc"][0]) if err["loc"] else "arguments"
    if err["type"] == "extra_forbidden":
        known = ", ".join(model.model_fields) or "none"
        return f"{op}: unknown argument {key!r} (it takes: {known})"
    field = model.model_fields.get(key)
    words = field.description if field is not None and field.description else "valid"
    return f"{op}: {key} must be {words}"


class SecretSetArgs(OpArgs):
    name: Text = None
    value: Annotated[
        Annotated[str, Field(max_length=65536)] | None,
        Field(description="a string of at most 65536 characters"),
    ] = None
    file: Text = None
    command: Text = None
    access: Texts = None


class SecretNameArgs(OpArgs):
    name: Text = None


class PurgeArgs(OpArgs):
    before: Annotated[
        Annotated[int | float, Field(ge=0, le=1e11)] | None,
        Field(description="seconds since the epoch"),
    ] = None
    hosts: Flag = None
    vacuum: Flag = None
