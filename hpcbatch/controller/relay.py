"""The controller's half of the rsh relay: connect a job's hpcbatch-rsh to its other nodes.

A job's `hpcbatch-rsh HOST CMD` (what mpirun and srun call) talks to its own
node's agent, which turns it into events on its SSH channel (see
transport/agent/relay.py). Here those events are checked and forwarded:
`relay_open` names a host, which must be one of the *same job's* nodes (by
inventory name, address or probed hostname); the target node's agent is asked
to run the command inside that node's attempt (`rspawn`). Then bytes flow:
stdin as `relay_in`/`relay_eof` -> `rin`, output as `rout` -> `relay_out`, the
end as `rexit` -> `relay_exit`; a client that goes away (`relay_close`) kills
the remote command (`rkill`).

Everything is forwarded with `HostPool.post` (no round trips, order kept) and
nothing is awaited, so events are handled in the order the links deliver them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from hpcbatch.controller.execs import KEY_PREFIX, ExecService
from hpcbatch.controller.jobs import JobService
from hpcbatch.controller.steps import STEP_EVENT, StepService
from hpcbatch.core.records import AttemptRecord, AttemptState, JobRecord, parse_attempt_id
from hpcbatch.transport.pool import HostPool, HostUnavailable

log = logging.getLogger(__name__)

SOURCE_EVENTS = frozenset({"relay_open", "relay_in", "relay_eof", "relay_close"})
TARGET_EVENTS = frozenset({"rout", "rexit"})
LIVE = (AttemptState.STARTING, AttemptState.RUNNING)


@dataclass(slots=True)
class Session:
    key: str  # "<source host>/<sid>": unique across agents
    job_id: int
    src: str
    sid: str
    dst: str


class RelayService:
    def __init__(
        self, jobs: JobService, pool: HostPool, steps: StepService | None = None,
        execs: ExecService | None = None,
    ) -> None:  # fmt: skip
        self.jobs = jobs
        self.pool = pool
        self.execs = execs  # commands started through the API (alloc, run --pty)
        self.steps = steps  # srun's step reports come over the same socket
        self.sessions: dict[str, Session] = {}
        self.opened = 0

    def handles(self, kind: Any) -> bool:
        return kind in SOURCE_EVENTS or kind in TARGET_EVENTS or kind == STEP_EVENT

    def on_event(self, host: str, ev: dict[str, Any]) -> None:
        kind = ev.get("ev")
        if kind == STEP_EVENT:
            if self.steps is not None:
                self.steps.on_event(host, ev)
        elif kind == "relay_open":
            self._open(host, ev)
        elif kind in SOURCE_EVENTS:
            s = self.sessions.get(f"{host}/{ev.get('sid')}")
            if s is None:
                return
            if kind == "relay_in":
                self._post(s.dst, "rin", key=s.key, data=str(ev.get("data") or ""))
            elif kind == "relay_eof":
                self._post(s.dst, "rin", key=s.key, data="", eof=True)
            else:
                del self.sessions[s.key]
                self._post(s.dst, "rkill", key=s.key)
        elif self.execs is not None and str(ev.get("key")).startswith(KEY_PREFIX):
            self.execs.on_target(host, ev)
        else:
            s = self.sessions.get(str(ev.get("key")))
            if s is None or s.dst != host:
                return
            if kind == "rout":
                self._post(s.src, "relay_out", sid=s.sid, fd=ev.get("fd"), data=ev.get("data"))
            else:
                del self.sessions[s.key]
                self._post(s.src, "relay_exit", sid=s.sid, code=ev.get("code"),
                           signal=ev.get("signal"), error=ev.get("error"),
                           usage=ev.get("usage"))  # fmt: skip

    def host_down(self, host: str, reason: str) -> None:
        """Sessions through a host whose link went down end now, on both sides."""
        if self.execs is not None:
            self.execs.host_down(host, reason)
        for s in list(self.sessions.values()):
            if s.src == host:
                del self.sessions[s.key]
                self._post(s.dst, "rkill", key=s.key)
            elif s.dst == host:
                del self.sessions[s.key]
                error = f"{host} became unreachable: {reason}"
                self._post(s.src, "relay_exit", sid=s.sid, code=255, signal=None, error=error)

    # ------------------------------------------------------------------ internals

    def _open(self, host: str, ev: dict[str, Any]) -> None:
        sid = str(ev.get("sid"))
        target = str(ev.get("host") or "")
        try:
            job_id, attempt, node = parse_attempt_id(str(ev.get("attempt")))
        except ValueError:
            self._refuse(host, sid, f"bad attempt id {ev.get('attempt')!r}")
            return
        job = self.jobs.live(job_id)
        src = self._attempt(job, attempt, node)
        if job is None or src is None or src.host != host:
            self._refuse(host, sid, f"job {job_id} is not running here")
            return
        dst = self._resolve(job, src, target)
        if dst is None:
            nodes = ", ".join(
                f"{a.host} ({self.jobs.cluster.hosts[a.host].spec.address or a.host})"
                for a in self.jobs.current_attempts(job)
            )
            self._refuse(host, sid, f"{target} is not a node of job {job_id} (nodes: {nodes})")
            return
        if dst.state not in LIVE:
            self._refuse(host, sid, f"node {dst.node} ({dst.host}) of job {job_id} is not running")
            return
        key = f"{host}/{sid}"
        self.sessions[key] = Session(key, job_id, host, sid, dst.host)
        self.opened += 1
        command = str(ev.get("command") or "")
        if not self._post(dst.host, "rspawn", key=key, attempt=dst.attempt_id, command=command):
            del self.sessions[key]
            self._refuse(host, sid, f"{dst.host} is not connected")

    def _attempt(self, job: JobRecord | None, attempt: int, node: int) -> AttemptRecord | None:
        if job is None or job.attempt != attempt:
            return None
        return next(
            (a for a in self.jobs.current_attempts(job) if a.node == node and a.state in LIVE),
            None,
        )

    def _resolve(self, job: JobRecord, src: AttemptRecord, target: str) -> AttemptRecord | None:
        if target in ("localhost", "127.0.0.1", "::1"):
            return src
        attempts = self.jobs.current_attempts(job)
        hosts = self.jobs.cluster.hosts
        for a in attempts:
            if target in (a.host, hosts[a.host].spec.address):
                return a
        # A probed hostname only when it names one node (hosts sharing a machine share it).
        by_hostname = [a for a in attempts if (f := hosts[a.host].facts) and f.hostname == target]
        return by_hostname[0] if len(by_hostname) == 1 else None

    def _refuse(self, host: str, sid: str, error: str) -> None:
        log.warning("%s: relay refused: %s", host, error)
        self._post(host, "relay_exit", sid=sid, code=255, signal=None, error=error)

    def _post(self, host: str, op: str, **fields: Any) -> bool:
        try:
            self.pool.post(host, op, **fields)
        except HostUnavailable:
            return False
        return True
