"""The API's operations on commands run inside a running job from outside it.

exec_start, exec_read, exec_input, exec_resize, exec_kill (and job_input,
`hpcbatch run`'s stdin for its own job): the argument models
and thin handlers over ExecService (controller/execs.py), which checks the
caller owns the job. Used by `hpcbatch alloc` (its srun/mpirun) and
`hpcbatch run --pty`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from hpcbatch.controller.apiargs import Flag, JobId, OpArgs, Operation, Seconds, Text
from hpcbatch.controller.callers import ApiError, Caller
from hpcbatch.controller.execs import ExecService

Size = Annotated[
    Annotated[list[Annotated[int, Field(ge=1, le=10_000)]], Field(min_length=2, max_length=2)]
    | None,
    Field(description="[rows, columns]"),
]
Command = Annotated[
    Annotated[str, Field(max_length=1 << 20)] | None, Field(description="a command line")
]
Data = Annotated[
    Annotated[str, Field(max_length=1 << 22)] | None, Field(description="base64 bytes")
]


class ExecStartArgs(OpArgs):
    job_id: JobId = None
    node: JobId = None
    command: Command = None
    pty: Size = None


class ExecKeyArgs(OpArgs):
    key: Text = None
    index: JobId = None
    timeout_s: Seconds = None
    data: Data = None
    eof: Flag = None
    size: Size = None


class JobInputArgs(OpArgs):
    """job_input: `hpcbatch run`'s stdin for its job (`eof`: no more)."""

    job_id: JobId = None
    data: Data = None
    eof: Flag = None


def _key(args: ExecKeyArgs) -> str:
    if not args.key:
        raise ApiError("bad_request", "key: required")
    return args.key


class ExecHandlers:
    def __init__(self, execs: ExecService) -> None:
        self._execs = execs

    def table(self) -> dict[str, Operation[Any]]:
        return {
            "exec_start": Operation(ExecStartArgs, self.start),
            "exec_read": Operation(ExecKeyArgs, self.read),
            "exec_input": Operation(ExecKeyArgs, self.input),
            "exec_resize": Operation(ExecKeyArgs, self.resize),
            "exec_kill": Operation(ExecKeyArgs, self.kill),
            "job_input": Operation(JobInputArgs, self.job_input),
        }

    async def job_input(self, args: JobInputArgs, caller: Caller) -> Any:
        if args.job_id is None:
            raise ApiError("bad_request", "job_id: required")
        return await self._execs.job_input(caller, args.job_id, args.data or "", bool(args.eof))

    async def start(self, args: ExecStartArgs, caller: Caller) -> Any:
        if args.job_id is None or not args.command:
            raise ApiError("bad_request", "job_id and command: required")
        key = self._execs.start(caller, args.job_id, args.node or 0, args.command, args.pty)
        return {"key": key}

    async def read(self, args: ExecKeyArgs, caller: Caller) -> Any:
        timeout = min(float(args.timeout_s if args.timeout_s is not None else 1.0), 30.0)
        return await self._execs.read(caller, _key(args), args.index or 0, timeout)

    async def input(self, args: ExecKeyArgs, caller: Caller) -> Any:
        self._execs.send(caller, _key(args), "rin", data=args.data or "", eof=bool(args.eof))
        return {}

    async def resize(self, args: ExecKeyArgs, caller: Caller) -> Any:
        if not args.size:
            raise ApiError("bad_request", "size: required, [rows, columns]")
        self._execs.send(caller, _key(args), "rresize", rows=args.size[0], cols=args.size[1])
        return {}

    async def kill(self, args: ExecKeyArgs, caller: Caller) -> Any:
        self._execs.send(caller, _key(args), "rkill")
        return {}
