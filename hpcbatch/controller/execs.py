"""Commands run inside a running job from outside it: `alloc`'s srun/mpirun, `run --pty`.

`hpcbatch alloc` holds an allocation (a job whose script waits) and opens a
shell on the submit side; its `srun` and `mpirun` run on the job's main node
through `exec_start`. `hpcbatch run --pty CMD` does the same with a
pseudo-terminal. The command runs in that node's attempt of the job, as
hpcbatch-rsh's do: the node's agent starts it (op `rspawn`, with `pty` for a
terminal) and sends its output as `rout` events and its end as `rexit`, which
the relay (controller/relay.py) hands here for keys `api/N`. Output is kept
until read: `exec_read` returns what came after the index the reader has,
waiting up to its timeout for more (a long poll), and drops what was read.
Only the job's owner (or an administrator) may run commands in it.

`job_input` is `hpcbatch run`'s stdin (without --pty): bytes for the job's own
main-node process, which its agent launched with a stdin pipe (agent/jobctl.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from hpcbatch.controller.callers import ApiError, Caller
from hpcbatch.controller.jobs import JobService
from hpcbatch.core.records import AttemptState
from hpcbatch.transport.pool import AgentError, HostPool, HostUnavailable

KEY_PREFIX = "api/"
MAX_BUFFERED = 64 << 20  # base64 characters kept for a slow reader before output is dropped


@dataclass(slots=True)
class Exec:
    key: str
    job_id: int
    host: str
    uid: int
    chunks: list[tuple[int, str]] = field(default_factory=list)
    first: int = 0  # the index of chunks[0]
    size: int = 0
    exit: dict[str, Any] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class ExecService:
    def __init__(self, jobs: JobService, pool: HostPool) -> None:
        self.jobs = jobs
        self.pool = pool
        self.execs: dict[str, Exec] = {}
        self.serial = 0

    def start(
        self, caller: Caller, job_id: int, node: int, command: str, pty: list[int] | None
    ) -> str:
        job = self.jobs.live(job_id)
        if job is None:
            raise ApiError("not_found", f"job {job_id} is not running")
        if caller.uid != job.uid and not caller.admin:
            raise ApiError("forbidden", f"job {job_id} is not yours")
        target = next(
            (a for a in self.jobs.current_attempts(job)
             if a.node == node and a.state == AttemptState.RUNNING), None,
        )  # fmt: skip
        if target is None:
            raise ApiError("conflict", f"job {job_id} has no running node {node}")
        self.serial += 1
        key = f"{KEY_PREFIX}{self.serial}"
        fields: dict[str, Any] = {"key": key, "attempt": target.attempt_id, "command": command}
        if pty:
            fields["pty"] = pty
        try:
            self.pool.post(target.host, "rspawn", **fields)
        except HostUnavailable as exc:
            raise ApiError("unavailable", str(exc)) from None
        self.execs[key] = Exec(key, job_id, target.host, caller.uid)
        return key

    async def job_input(self, caller: Caller, job_id: int, data: str, eof: bool) -> dict[str, Any]:
        """`hpcbatch run`'s stdin for its job's main node (launched with `stdin`): while
        that node is not running yet, `waiting` (its state) and nothing is sent; then
        `pending`: the bytes its host has not yet put into the job's stdin pipe."""
        job = self.jobs.live(job_id)
        if job is None:
            raise ApiError("not_found", f"job {job_id} is not waiting or running")
        if caller.uid != job.uid and not caller.admin:
            raise ApiError("forbidden", f"job {job_id} is not yours")
        if not job.spec.stdin:
            raise ApiError("bad_request", f"job {job_id} takes no input (not started by run)")
        target = next(
            (a for a in self.jobs.current_attempts(job)
             if a.node == job.spec.main_node and a.state == AttemptState.RUNNING), None,
        )  # fmt: skip
        if target is None:
            return {"waiting": str(job.state)}
        try:
            reply = await self.pool.request(
                target.host, "stdin", attempt=target.attempt_id, data=data, eof=eof
            )
        except HostUnavailable as exc:
            raise ApiError("unavailable", str(exc)) from None
        except AgentError as exc:
            raise ApiError("conflict", f"job {job_id}: {exc.message}") from None
        return {"pending": reply["pending"]}

    def _get(self, caller: Caller, key: str) -> Exec:
        ex = self.execs.get(key)
        if ex is None or (ex.uid != caller.uid and not caller.admin):
            raise ApiError("not_found", f"no command {key}")
        return ex

    async def read(self, caller: Caller, key: str, index: int, timeout: float) -> dict[str, Any]:
        ex = self._get(caller, key)
        if index >= ex.first + len(ex.chunks) and ex.exit is None:
            ex.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ex.changed.wait(), timeout)
        drop = max(0, min(index - ex.first, len(ex.chunks)))
        del ex.chunks[:drop]
        ex.first += drop
        ex.size = sum(len(d) for _, d in ex.chunks)
        out = [{"fd": fd, "data": data} for fd, data in ex.chunks]
        done = ex.exit is not None and not out
        if done:
            self.execs.pop(key, None)
        return {"chunks": out, "next": ex.first + len(out), "exit": ex.exit if done else None}

    def send(self, caller: Caller, key: str, op: str, **fields: Any) -> None:
        ex = self._get(caller, key)
        try:
            self.pool.post(ex.host, op, key=key, **fields)
        except HostUnavailable as exc:
            raise ApiError("unavailable", str(exc)) from None

    def on_target(self, host: str, ev: dict[str, Any]) -> None:
        """`rout`/`rexit` for an `api/` key, from the host that runs it."""
        ex = self.execs.get(str(ev.get("key")))
        if ex is None or ex.host != host:
            return
        if ev.get("ev") == "rout":
            data = str(ev.get("data") or "")
            if ex.size + len(data) <= MAX_BUFFERED:
                ex.chunks.append((int(ev.get("fd") or 1), data))
                ex.size += len(data)
        else:
            ex.exit = {k: ev.get(k) for k in ("code", "signal", "error")}
        ex.changed.set()

    def host_down(self, host: str, reason: str) -> None:
        for ex in self.execs.values():
            if ex.host == host and ex.exit is None:
                ex.exit = {"code": 255, "signal": None, "error": f"{host}: {reason}"}
                ex.changed.set()
