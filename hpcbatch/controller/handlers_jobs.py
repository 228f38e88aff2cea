"""The API's job operations: submit, jobs, show, cancel, logs, wait.

Each handler takes its operation's checked arguments (`apiargs`) and the
caller, then asks the service that acts (the submitter, cancel) or the read
model that answers. Who may do what is decided here, next to the operation.
"""

from __future__ import annotations

import pwd
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from hpcbatch.controller.apiargs import (
    AcctArgs,
    CancelArgs,
    JobsArgs,
    LogsArgs,
    Operation,
    ShowArgs,
    SubmitArgs,
    SubmitArgvArgs,
    WaitArgs,
)
from hpcbatch.controller.callers import ApiError, Caller
from hpcbatch.controller.readmodel import READ_LIMIT, ReadModel
from hpcbatch.core.directives import DirectiveError
from hpcbatch.core.states import JobState
from hpcbatch.core.submitargv import (
    EnvironmentNeeded,
    ScriptNeeded,
    ScriptSource,
    build_submission,
)

if TYPE_CHECKING:
    from hpcbatch.controller.definitions import DefinitionService

NOBODY = 65534
# Read in the submitter's local time zone (`--begin 16:00`): the quick client parses
# a submission that sets one itself, in its own process, as the full CLI does.
LOCAL_TIME_KEYS = frozenset({"begin", "deadline"})
CancelFn = Callable[[dict[str, Any], Caller], Awaitable[list[dict[str, Any]]]]


class Submits(Protocol):
    """The submitter (`Submitter.submit`): a raw request in, the accepted job out."""

    async def submit(self, raw: Any, caller: Caller) -> dict[str, Any]: ...


def on_behalf(user: str, caller: Caller) -> Caller:
    """An administrator submitting for a user (as root's `sbatch --uid`): accounting,
    fair share and ownership are that user's; the job still runs as the host login."""
    if not caller.admin:
        raise ApiError("forbidden", "only an administrator may submit for another user")
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        uid = NOBODY  # no such account here: owned by nobody, so only admins may cancel
    return Caller(uid=uid, user=user)


class SentScript(ScriptSource):
    """The submitter's script as the quick client sent it: the text of one file, or
    of standard input (`script_for` "-"); anything else is asked for."""

    def __init__(self, args: SubmitArgvArgs) -> None:
        self._args = args

    def _sent(self, path: str) -> str:
        if self._args.script is None or self._args.script_for != path:
            raise ScriptNeeded(path)
        return self._args.script

    def read(self, path: str) -> str:
        return self._sent(path)

    def read_stdin(self) -> str | None:
        return self._sent("-")

    def stdin_piped(self) -> bool:
        return bool(self._args.stdin_piped)

    def realpath(self, path: str) -> str:
        self._sent(path)
        return self._args.script_realpath or path


class SentEnvironment(Mapping[str, str]):
    """The submitter's environment as the quick client sent it; read before it was
    sent (the submission exports some of it), it is asked for."""

    def __init__(self, env: dict[str, str] | None) -> None:
        self._env = env

    def _sent(self) -> dict[str, str]:
        if self._env is None:
            raise EnvironmentNeeded
        return self._env

    def __getitem__(self, key: str) -> str:
        return self._sent()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sent())

    def __len__(self) -> int:
        return len(self._sent())


def _required(value: int | None, key: str) -> int:
    if value is None:
        raise ApiError("bad_request", f"{key} is required")
    return value


class JobHandlers:
    def __init__(
        self,
        read: ReadModel,
        submitter: Submits,
        definitions: DefinitionService,
        cancel: CancelFn,
    ) -> None:
        self._read = read
        self._submitter = submitter
        self._definitions = definitions
        self._cancel = cancel

    def table(self) -> dict[str, Operation[Any]]:
        return {
            "submit": Operation(SubmitArgs, self.submit),
            "submit_argv": Operation(SubmitArgvArgs, self.submit_argv),
            "jobs": Operation(JobsArgs, self.jobs),
            "show": Operation(ShowArgs, self.show),
            "cancel": Operation(CancelArgs, self.cancel),
            "logs": Operation(LogsArgs, self.logs),
            "wait": Operation(WaitArgs, self.wait),
            "acct": Operation(AcctArgs, self.acct),
        }

    async def submit(self, args: SubmitArgs, caller: Caller) -> Any:
        request: Any = args.request
        if isinstance(request, dict) and request.get("definition") is not None:
            request = await self._definitions.expand(request)
        if args.as_user is not None:
            caller = on_behalf(args.as_user, caller)
        return await self._submitter.submit(request, caller)

    async def submit_argv(self, args: SubmitArgvArgs, caller: Caller) -> Any:
        """`hpcbatch submit ARGS` parsed here by the CLI's own parser, so that the
        quick client imports none of it. Replies `{"need_script": PATH}` until it
        has the script the arguments name, `{"need_env": true}` until it has the
        environment where the submission exports some, `{"client_side": REASON}`
        where the client must parse itself, else the submission's result with the
        CLI's warnings and output options."""
        environ = SentEnvironment(args.env)
        try:
            sub = build_submission(
                list(args.argv), SentScript(args), environ=environ, cwd=args.cwd, umask=args.umask
            )
        except ScriptNeeded as need:
            return {"need_script": need.path}
        except EnvironmentNeeded:
            return {"need_env": True}
        except DirectiveError as exc:
            raise ApiError("bad_request", str(exc)) from None
        if LOCAL_TIME_KEYS & sub.request.keys():
            return {"client_side": "a time read in the submitter's time zone"}
        result = await self.submit(SubmitArgs(request=sub.request), caller)
        return {**result, "warnings": sub.warnings, "wait": sub.wait, "parsable": sub.parsable}

    async def jobs(self, args: JobsArgs, caller: Caller) -> Any:
        states = [s.upper() for s in args.states or []]
        for s in states:
            if s not in JobState.__members__:
                raise ApiError("bad_request", f"unknown state {s!r}")
        return await self._read.jobs(args, states, caller)

    async def acct(self, args: AcctArgs, caller: Caller) -> Any:
        """sacct: the caller's own jobs unless a user is named or `all_users`."""
        states = [s.upper() for s in args.states or []]
        for s in states:
            if s not in JobState.__members__:
                raise ApiError("bad_request", f"acct: unknown state {s!r}")
        if args.user is None and not args.all_users and not args.ids:
            args = args.model_copy(update={"user": caller.user})
        return await self._read.acct(args, states, None if caller.admin else caller.user)

    async def show(self, args: ShowArgs, caller: Caller) -> Any:
        return await self._read.show(_required(args.job_id, "job_id"), caller)

    async def cancel(self, args: CancelArgs, caller: Caller) -> Any:
        return await self._cancel(args.model_dump(), caller)

    async def logs(self, args: LogsArgs, caller: Caller) -> Any:
        return await self._read.logs(
            _required(args.job_id, "job_id"),
            caller,
            stream="stdout" if args.stream is None else args.stream,
            node=args.node or 0,
            attempt=args.attempt,
            offset=args.offset or 0,
            limit=args.limit or READ_LIMIT,
        )

    async def wait(self, args: WaitArgs, caller: Caller) -> Any:
        if not args.job_ids:
            raise ApiError("bad_request", "job_ids: a non-empty list of job ids is required")
        timeout = float(args.timeout_s) if args.timeout_s else None
        return await self._read.wait(list(args.job_ids), timeout, caller)
