"""The controller's client API: JSON lines over a Unix socket.

The CLI and the dashboard use the same operations. The caller's identity is
taken from the socket's peer credentials (SO_PEERCRED), never from the
request, so a user can cancel only their own jobs unless an administrator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcbatch import __version__
from hpcbatch.controller.apiargs import check_args
from hpcbatch.controller.callers import ApiError, Caller
from hpcbatch.controller.cancel import cancel_jobs
from hpcbatch.controller.stats import controller_stats
from hpcbatch.core.records import JobRecord
from hpcbatch.core.states import AdminState, JobState
from hpcbatch.store.db import StoreError
from hpcbatch.transport.link import AgentError, HostUnavailable

if TYPE_CHECKING:
    from hpcbatch.controller.app import Controller

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024 * 1024
Handler = Callable[[dict[str, Any], Caller], Awaitable[Any]]


def peer_caller(writer: asyncio.StreamWriter) -> Caller:
    sock: socket.socket = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return Caller(uid=uid, user=user)


def _ids(args: dict[str, Any], key: str = "job_ids") -> list[int]:
    raw = args.get(key)
    if not isinstance(raw, list) or not raw:
        raise ApiError("bad_request", f"{key}: a non-empty list of job ids is required")
    try:
        return [int(x) for x in raw]
    except (TypeError, ValueError):
        raise ApiError("bad_request", f"{key}: job ids must be integers") from None


def _int(args: dict[str, Any], key: str) -> int:
    try:
        return int(args[key])
    except KeyError:
        raise ApiError("bad_request", f"{key} is required") from None
    except (TypeError, ValueError):
        raise ApiError("bad_request", f"{key} must be an integer") from None


class ApiServer:
    def __init__(self, controller: Controller, path: Path) -> None:
        self.c = controller
        self.path = path
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self.ops: dict[str, Handler] = {
            "ping": self.op_ping,
            "stats": self.op_stats,
            "submit": self.op_submit,
            "jobs": self.op_jobs,
            "show": self.op_show,
            "cancel": self.op_cancel,
            "logs": self.op_logs,
            "hosts": self.op_hosts,
            "drain": self.op_drain,
            "resume": self.op_resume,
            "down": self.op_down,
            "queues": self.op_queues,
            "wait": self.op_wait,
            "register": self.op_register,
            "definitions": self.op_definitions,
            "definition": self.op_definition,
            "deregister": self.op_deregister,
            "queue_update": self.op_queue_update,
            "shutdown": self.op_shutdown,
        }

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_LINE
        )
        os.chmod(self.path, 0o666)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            caller = peer_caller(writer)
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._send(
                        writer, {"ok": False, "kind": "bad_request", "error": "request too large"}
                    )
                    break
                if not line:
                    break
                reply = await self._handle(line, caller, writer)
                if reply is None:  # the connection became an event stream and ended
                    break
                await self._send(writer, reply)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
        writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        await writer.drain()

    async def _handle(
        self, line: bytes, caller: Caller, writer: asyncio.StreamWriter
    ) -> dict[str, Any] | None:
        rid: Any = None
        try:
            try:
                msg = json.loads(line)
            except ValueError:
                raise ApiError("bad_request", "request is not valid JSON") from None
            if not isinstance(msg, dict):
                raise ApiError("bad_request", "request must be a JSON object")
            rid = msg.get("id")
            op = msg.get("op")
            if op == "watch":
                await self._send(writer, {"id": rid, "ok": True, "result": "watching"})
                await self._watch(writer)
                return None
            handler = self.ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise ApiError("bad_request", f"unknown operation {op!r}")
            check_args(str(op), msg)
            result = await handler(msg, caller)
            return {"id": rid, "ok": True, "result": result}
        except ApiError as exc:
            return {"id": rid, "ok": False, "kind": exc.kind, "error": exc.message}
        except TimeoutError:
            return {"id": rid, "ok": False, "kind": "timeout", "error": "timed out"}
        except StoreError as exc:
            # Disk full, read-only, I/O error: the change was rolled back, nothing of
            # this request was accepted; what was accepted before is kept.
            log.error("store write failed: %s", exc)
            return {"id": rid, "ok": False, "kind": "unavailable",
                    "error": f"the controller cannot write its store: {exc}"}  # fmt: skip
        except Exception as exc:
            log.exception("API request failed")
            return {"id": rid, "ok": False, "kind": "internal", "error": f"internal error: {exc}"}

    async def _watch(self, writer: asyncio.StreamWriter) -> None:
        queue = self.c.bus.subscribe()
        try:
            while True:
                event = await queue.get()
                if event is None:
                    break
                await self._send(writer, event)
        finally:
            self.c.bus.unsubscribe(queue)

    # ------------------------------------------------------------------ operations

    async def op_ping(self, args: dict[str, Any], caller: Caller) -> Any:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": time.time() - self.c.started_at,
            "user": caller.user,
            "admin": caller.admin,
            "inventory": str(self.c.inventory.path),
        }

    async def op_stats(self, args: dict[str, Any], caller: Caller) -> Any:
        return controller_stats(self.c)

    async def op_submit(self, args: dict[str, Any], caller: Caller) -> Any:
        request = args.get("request")
        if isinstance(request, dict) and request.get("definition") is not None:
            request = await self.c.definitions.expand(request)
        on_behalf = args.get("as_user")
        if on_behalf is not None:
            caller = self._on_behalf(str(on_behalf), caller)
        return await self.c.submitter.submit(request, caller)

    @staticmethod
    def _on_behalf(user: str, caller: Caller) -> Caller:
        """An administrator submitting for a user (as root's `sbatch --uid`): accounting,
        fair share and ownership are that user's; the job still runs as the host login."""
        if not caller.admin:
            raise ApiError("forbidden", "only an administrator may submit for another user")
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            uid = 65534  # no such account here: owned by nobody, so only admins may cancel
        return Caller(uid=uid, user=user)

    async def op_register(self, args: dict[str, Any], caller: Caller) -> Any:
        return await self.c.definitions.register(args.get("definition"), caller)

    async def op_definitions(self, args: dict[str, Any], caller: Caller) -> Any:
        name = args.get("name")
        return await self.c.definitions.list(
            str(name) if name else None, inactive=bool(args.get("all"))
        )

    async def op_definition(self, args: dict[str, Any], caller: Caller) -> Any:
        return (await self.c.definitions.get(args.get("ref"))).to_json()

    async def op_deregister(self, args: dict[str, Any], caller: Caller) -> Any:
        return await self.c.definitions.deregister(args.get("ref"), caller)

    async def op_queue_update(self, args: dict[str, Any], caller: Caller) -> Any:
        if not caller.admin:
            raise ApiError("forbidden", "only an administrator may change queue states")
        name = args.get("queue")
        if name not in self.c.inventory.queues:
            raise ApiError("not_found", f"unknown queue {name!r}")
        state = str(args.get("state") or "").upper()
        if state not in ("ENABLED", "DISABLED"):
            raise ApiError("bad_request", "state must be ENABLED or DISABLED")
        await self.c.set_queue_state(str(name), state == "ENABLED", args.get("reason"))
        return next(q for q in await self.op_queues({}, caller) if q["name"] == name)

    def _live(self, job_id: int) -> JobRecord | None:
        return self.c.jobs.active.get(job_id) or self.c.jobs.array_parents.get(job_id)

    async def _job(self, job_id: int) -> JobRecord:
        stored = await self.c.store.get_job(job_id)
        if stored is None:
            raise ApiError("not_found", f"job {job_id} not found")
        return self._with_live_reason(stored)

    def _with_live_reason(self, stored: JobRecord) -> JobRecord:
        job = self._live(stored.id)
        if job is not None:
            stored.reason = job.reason  # pending reasons live in memory
        return stored

    async def op_jobs(self, args: dict[str, Any], caller: Caller) -> Any:
        states = [str(s).upper() for s in args.get("states") or []]
        for s in states:
            if s not in JobState.__members__:
                raise ApiError("bad_request", f"unknown state {s!r}")
        ids = [int(i) for i in args.get("ids") or []]
        parents = [int(args["array_parent"])] if args.get("array_parent") is not None else []
        if not states and not ids and not parents and not args.get("all"):
            live = [*self.c.jobs.array_parents.values(), *self.c.jobs.active.values()]
            live.sort(key=lambda j: j.id)
            out = [j.summary() for j in live]
            return [
                s
                for s in out
                if (args.get("user") is None or s["user"] == args["user"])
                and (args.get("queue") is None or s["queue"] == args["queue"])
                and (args.get("name") is None or s["name"] == args["name"])
            ]
        records = await self.c.store.list_jobs(
            states=states,
            user=args.get("user"),
            queue=args.get("queue"),
            name=args.get("name"),
            ids=ids,
            array_parents=parents,
            limit=int(args.get("limit") or 10_000),
        )
        return [(self._live(rec.id) or rec).summary() for rec in records]

    async def op_show(self, args: dict[str, Any], caller: Caller) -> Any:
        job = await self._job(_int(args, "job_id"))
        transitions = await self.c.store.transitions(job.id)
        return {
            **job.summary(),
            "request": job.request,
            "transitions": [
                {"ts": t.ts, "old": t.old, "new": t.new, "reason": t.reason} for t in transitions
            ],
            "attempts": [a.to_json() for a in job.attempts],
        }

    async def op_cancel(self, args: dict[str, Any], caller: Caller) -> Any:
        return await cancel_jobs(self.c, args, caller)

    async def op_logs(self, args: dict[str, Any], caller: Caller) -> Any:
        job = await self._job(_int(args, "job_id"))
        if not job.attempts:
            return {"data": "", "offset": 0, "done": job.state.is_final, "state": str(job.state)}
        node = int(args.get("node") or 0)
        attempt = int(args.get("attempt") or job.attempt)
        rec = next((a for a in job.attempts if a.attempt == attempt and a.node == node), None)
        if rec is None:
            raise ApiError("not_found", f"job {job.id} has no attempt {attempt} node {node}")
        stream = args.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            raise ApiError("bad_request", "stream must be stdout or stderr")
        link = self.c.links.get(rec.host)
        if link is None or not link.connected:
            raise ApiError(
                "unavailable", f"host {rec.host} is not connected: {link and link.last_error}"
            )
        try:
            reply = await link.request(
                "read",
                attempt=rec.attempt_id,
                stream=stream,
                offset=int(args.get("offset") or 0),
                limit=int(args.get("limit") or 65536),
            )
        except AgentError as exc:
            if "no such attempt" in str(exc) or "unknown attempt" in str(exc):
                return {
                    "data": "",
                    "offset": 0,
                    "done": job.state.is_final,
                    "state": str(job.state),
                }
            raise ApiError("unavailable", str(exc)) from None
        except HostUnavailable as exc:
            raise ApiError("unavailable", str(exc)) from None
        return {
            "data": reply.get("data", ""),
            "offset": reply.get("offset", 0),
            "done": bool(reply.get("done")),
            "state": str(job.state),
            "host": rec.host,
        }

    async def op_hosts(self, args: dict[str, Any], caller: Caller) -> Any:
        return [h.summary() for h in self.c.cluster.hosts.values()]

    def _host(self, args: dict[str, Any], caller: Caller) -> str:
        if not caller.admin:
            raise ApiError("forbidden", "only an administrator may change host states")
        name = args.get("host")
        if name not in self.c.cluster.hosts:
            raise ApiError("not_found", f"unknown host {name!r}")
        return str(name)

    async def op_drain(self, args: dict[str, Any], caller: Caller) -> Any:
        name = self._host(args, caller)
        reason = args.get("reason") or f"drained by {caller.user}"
        return (await self.c.hosts.set_admin(name, AdminState.DRAIN, reason)).summary()

    async def op_down(self, args: dict[str, Any], caller: Caller) -> Any:
        name = self._host(args, caller)
        reason = args.get("reason") or f"set down by {caller.user}"
        return (await self.c.hosts.set_admin(name, AdminState.DOWN, str(reason))).summary()

    async def op_resume(self, args: dict[str, Any], caller: Caller) -> Any:
        name = self._host(args, caller)
        return (await self.c.hosts.set_admin(name, AdminState.ACTIVE, None)).summary()

    async def op_queues(self, args: dict[str, Any], caller: Caller) -> Any:
        counts: dict[str, dict[str, int]] = {}
        for job in self.c.jobs.active.values():
            per = counts.setdefault(job.queue, {})
            per[str(job.state)] = per.get(str(job.state), 0) + 1
        out = []
        for name, q in self.c.inventory.queues.items():
            out.append(
                {
                    "name": name,
                    "priority": q.priority,
                    "state": "ENABLED"
                    if self.c.cluster.queue_enabled.get(name, True)
                    else "DISABLED",
                    "compute_environments": list(q.compute_environments),
                    "hosts": list(self.c.cluster.queue_hosts(name)),
                    "default": name == self.c.inventory.default_queue,
                    "counts": counts.get(name, {}),
                }
            )
        return out

    async def _stored(self, ids: list[int]) -> dict[int, JobRecord]:
        """Jobs from the store by id, a few queries per 500 (not two per job: a `wait`
        on 1,000 jobs spent half a second in per-job reads)."""
        unique = sorted(set(ids))
        found: dict[int, JobRecord] = {}
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            for job in await self.c.store.list_jobs(ids=chunk, limit=len(chunk)):
                found[job.id] = job
        return found

    async def op_wait(self, args: dict[str, Any], caller: Caller) -> Any:
        ids = _ids(args)
        timeout = args.get("timeout_s")
        # Jobs not live are final already: read once, before waiting, and kept.
        gone = [job_id for job_id in ids if self._live(job_id) is None]
        stored = await self._stored(gone)
        for job_id in gone:
            if job_id not in stored:
                raise ApiError("not_found", f"job {job_id} not found")
        await self.c.jobs.wait_final(ids, float(timeout) if timeout else None)
        stored.update(await self._stored([i for i in ids if i not in stored]))
        out = []
        for job_id in ids:
            job = stored.get(job_id)
            if job is None:
                raise ApiError("not_found", f"job {job_id} not found")
            out.append(self._with_live_reason(job).summary())
        return out

    async def op_shutdown(self, args: dict[str, Any], caller: Caller) -> Any:
        if not caller.admin:
            raise ApiError("forbidden", "only an administrator may stop the controller")
        self.c.request_stop()
        return {"stopping": True}
