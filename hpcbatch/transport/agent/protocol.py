"""The agent protocol as types: requests, replies and events, and the dispatch of a line.

Why it exists: three programs speak this protocol (the host agent, the
simulated agent of the scale tests, and the controller's links) and each
must agree with the others on every field. Here each message is a TypedDict,
so the type checker holds the real agent's and the simulated agent's
handlers to the same replies, and the controller reads typed replies from
`HostPool.request`. `serve_line` is the request dispatch both agents run:
decode a line, check its id, call the op's handler, send the reply (or, for
a posted request, an `error` event when it fails). The wire format is JSON
lines; docs/architecture.md, "Host agent protocol", has the table.

Standard library only, Python 3.8+ (uploaded with the agent): the types are
`typing.TypedDict`, and annotations stay strings (`from __future__`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:  # never evaluated on hosts (Python 3.8 has no `X | None` at run time)
    from collections.abc import Callable, Mapping

    Handler = Callable[[dict[str, Any]], Mapping[str, Any] | None]
    """An op's handler: the reply's fields, or None when it replies later itself."""


ErrorCode = Literal[
    "bad_request", "exists", "no_attempt", "bad_path", "no_user", "unknown_op", "internal",
    "stale_epoch",
]  # fmt: skip
"""What kind of refusal an `ok: false` reply is; the controller decides on it, never
on the words of `error` (which are for people):

- `bad_request`: a malformed or invalid field; the request will never succeed.
- `exists`: the attempt was launched already (a retry after a lost reply).
- `no_attempt`: the host has no such attempt.
- `bad_path`: a user path (working directory, output file) is missing, not a regular
  file or did not answer in time.
- `no_user`: the job's user has no account on this host.
- `unknown_op`: the agent does not know the op (an older or newer agent).
- `internal`: the agent failed; a bug to report.
- `stale_epoch`: the request's controller epoch is older than one this host has seen:
  another controller took the lead (agent/epoch.py); the sender must stop.
"""

ERROR_CODES: tuple[str, ...] = (
    "bad_request", "exists", "no_attempt", "bad_path", "no_user", "unknown_op", "internal",
    "stale_epoch",
)  # fmt: skip


class BadRequest(Exception):
    """A request the agent refuses: the message goes back as `error`, the kind as `code`."""

    def __init__(self, message: str, code: ErrorCode = "bad_request") -> None:
        super().__init__(message)
        self.code: ErrorCode = code


AttemptStateName = Literal["running", "exited", "lost"]

# --------------------------------------------------------------------------- requests
# Every request is {"id": int, "op": str, ...fields}. A negative id: posted, no reply.
# A controller adds `epoch` (an int, its lease generation) to every request; the ops
# that start, stop or forget attempts refuse an older one than the host has seen
# (`stale_epoch`: agent/epoch.py, FENCED_OPS).


class Request(TypedDict):
    id: int
    op: str


class ContainerSpec(TypedDict, total=False):
    runtime: str
    exe: str
    kind: str
    image: str
    mounts: list[str]
    gpus: list[int]


class LaunchRequest(Request, total=False):
    attempt: str
    script: str
    args: list[str]
    env: dict[str, str]
    cwd: str | None
    stdout: str | None
    stderr: str | None
    append: bool
    stdin: bool  # the job's stdin is a FIFO the `stdin` op feeds (hpcbatch run)
    timeout_s: float | None
    kill_grace_s: float
    warn_signal: int | None
    warn_before_s: float
    warn_batch_only: bool
    files: dict[str, str]
    file_env: dict[str, str]
    container: ContainerSpec
    user: str  # run_as = "submitter": the account the job runs as (absent: the agent's)


class ImageRequest(Request):
    attempt: str
    container: ContainerSpec


class KillRequest(Request, total=False):
    attempt: str
    reason: str
    grace_s: float


class StdinRequest(Request, total=False):
    attempt: str
    data: str  # base64
    eof: bool


class RetimeRequest(Request):
    attempt: str
    timeout_s: float | None  # the attempt's time limit now, counted from its start


class AckRequest(Request):
    attempts: list[str]


class PurgeRequest(Request, total=False):
    older_than_s: float  # acknowledged this long ago (or more)
    attempts: list[str]  # or: these, acknowledged, whatever their age


class ReadRequest(Request, total=False):
    attempt: str
    stream: Literal["stdout", "stderr"]
    offset: int
    limit: int


class FenceRequest(Request, total=False):
    keep: list[str]
    grace_s: float


class ExecRequest(Request, total=False):
    argv: list[str]
    env: dict[str, str]
    timeout_s: float


class RspawnRequest(Request):
    key: str
    attempt: str
    command: str


class RinRequest(Request, total=False):
    key: str
    data: str  # base64
    eof: bool


class RkillRequest(Request):
    key: str


class RelayOutRequest(Request):
    sid: str
    fd: int
    data: str


class RelayExitRequest(Request):
    sid: str
    code: int | None
    signal: int | None
    error: str | None


# --------------------------------------------------------------------------- replies
# Every reply is {"id", "ok": true, ...fields} or {"id", "ok": false, "error", "code"}
# (`code`: an ErrorCode); the
# TypedDicts below are the fields of a successful one, as a handler returns them.


class ExitRecord(TypedDict, total=False):
    """How an attempt ended: the shepherd's `exit` file, or the agent's `lost` record."""

    code: int | None
    signal: int | None
    reason: str | None
    timed_out: bool
    killed: bool
    started: float | None
    ended: float | None
    # What the job used (cgroups.py, procs.job_usage): elapsed_s, cpu_user_s,
    # cpu_sys_s, mem_peak_bytes, mem_limit_bytes, source ("cgroup" or "rusage"); on GPU
    # hosts with nvidia-smi gpu_util (mean %) and gpu_mem_peak_bytes (gpus.py).
    usage: dict[str, Any]
    oom: bool  # the kernel's OOM killer ended it at its cgroup's memory limit


class ReportedAttempt(TypedDict):
    """An attempt not yet acknowledged, as `hello` lists it."""

    attempt: str
    state: AttemptStateName
    pid: int | None
    exit: ExitRecord | None


class HelloReply(TypedDict):
    agent_version: str
    pid: int
    facts: dict[str, Any]  # raw; core.facts parses them
    attempts: list[ReportedAttempt]


class LaunchReply(TypedDict):
    pid: int
    started: float


class ImageReply(TypedDict):
    present: bool
    pulled: bool


class KillReply(TypedDict):
    found: bool


class StdinReply(TypedDict):
    pending: int  # bytes not in the job's stdin pipe yet


class RetimeReply(TypedDict):
    found: bool  # the shepherd was told (false: the attempt is not running here)


class AckReply(TypedDict):
    acked: list[str]


class PurgeReply(TypedDict):
    removed: list[str]


class ReadReply(TypedDict):
    data: str
    offset: int
    done: bool


class FenceReply(TypedDict):
    killed: list[str]


class ExecReply(TypedDict):
    code: int | None
    signal: int | None
    timed_out: bool
    stdout: str
    stderr: str


class Empty(TypedDict):
    """The reply of `shutdown` and of the posted relay ops."""


# --------------------------------------------------------------------------- events
# Events carry `ev` and no `id`.


class ExitEvent(ExitRecord):
    ev: Literal["exit"]
    attempt: str


class HeartbeatEvent(TypedDict, total=False):
    ev: Literal["heartbeat"]
    t: float
    running: int
    # Live usage of the running attempts that have a cgroup: attempt -> {cpu_s (CPU
    # seconds so far), mem_bytes (now)}; the controller turns two samples into a rate.
    usage: dict[str, dict[str, float]]


class ProgressEvent(TypedDict):
    ev: Literal["progress"]
    attempt: str
    text: str


class ErrorEvent(TypedDict, total=False):
    ev: Literal["error"]
    error: str
    code: ErrorCode


# The relay's events (relay_open, relay_in, relay_eof, relay_close, rout, rexit) are
# described in docs/architecture.md; transport/agent/relay.py sends them.

# --------------------------------------------------------------------------- dispatch


def serve_line(
    line: bytes, ops: Mapping[str, Handler], send: Callable[[Mapping[str, Any]], None]
) -> str | None:
    """Serve one request line: decode it, run its op's handler, send the reply.

    Returns the op when its handler succeeded (whether or not it replied: a
    posted request gets no reply, a handler returning None replies later),
    else None (the line was malformed, or the op refused; the error was sent).
    """
    try:
        req = json.loads(line)
    except ValueError as exc:
        send({"ev": "error", "error": f"malformed request line ({exc}): {line[:200]!r}"})
        return None
    rid = req.get("id") if isinstance(req, dict) else None
    if not isinstance(rid, int) or isinstance(rid, bool):
        send({"ev": "error", "error": f"request without an integer id: {line[:200]!r}"})
        return None
    op = req.get("op")
    handler = ops.get(op) if isinstance(op, str) else None
    code: ErrorCode
    try:
        if handler is None:
            raise BadRequest(f"unknown op {op!r}; known: {', '.join(ops)}", "unknown_op")
        result = handler(req)
    except BadRequest as exc:
        error, code = str(exc), exc.code
    except Exception as exc:
        error, code = f"internal error in {op}: {type(exc).__name__}: {exc}", "internal"
    else:
        # None: the handler replies later. A negative id: the sender wants no reply
        # (relay traffic, posted without waiting).
        if result is not None and rid >= 0:
            send({"id": rid, "ok": True, **result})
        return str(op)
    if rid >= 0:
        send({"id": rid, "ok": False, "error": error, "code": code})
    else:
        send({"ev": "error", "error": f"{op}: {error}", "code": code})
    return None
