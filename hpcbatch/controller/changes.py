"""State changes of jobs and hosts as events: the feed behind `hpcbatch events`.

An event is one JSON object (EventBridge-like): `time` (ISO 8601, UTC) and
`ts` (seconds since the epoch), `kind` (`job` or `host`), the job's id, user,
queue and name or the host's name, `old` and `new` state, and `reason`.

The feed is an observer of the job service and of the host service: both
already tell their observers of every change, so the feed costs a dictionary
look-up per change (to know the old state) and, only while someone follows,
one small dictionary per event. Events go to their own bus, apart from the
dashboard's `watch` stream of summaries; notifications (webhooks, mail) follow
the same feed.

A follower sees every event, but only its own jobs' details (user, name,
reason) unless it is an administrator: another user's job shows as its id,
queue and states. `--since` replays the stored transitions (the store keeps
each job's), then goes on live with what came after.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any

from pydantic import Field

from hpcbatch.controller.apiargs import Flag, JobId, OpArgs, Text, Texts, parse_args
from hpcbatch.controller.callers import ApiError, Caller
from hpcbatch.controller.cluster import HostRuntime
from hpcbatch.controller.events import EventBus
from hpcbatch.controller.readmodel import sees_all
from hpcbatch.core.records import JobRecord
from hpcbatch.core.states import AdminState
from hpcbatch.store.history import HistoryTable, JobChange

Event = dict[str, Any]
Send = Callable[[list[Event]], Awaitable[None]]  # writes events, one JSON line each
Listener = Callable[[Event, JobRecord | None], None]  # the job, for a job's event
MAX_REPLAY = 100_000  # events replayed by one `--since` (the newest are cut)
DETAILS = ("user", "name", "reason")
GATHER_S = 0.05  # a follower's events wait at most this long to go out together


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def host_state(host: HostRuntime) -> str:
    """What a host is, in one word: the operator's state when not ACTIVE, else the link's."""
    return str(host.admin) if host.admin != AdminState.ACTIVE else str(host.state)


def job_event(
    ts: float, job_id: int, display: str, old: str | None, new: str, reason: str | None,
    user: str, queue: str, name: str,
) -> Event:  # fmt: skip
    return {
        "time": iso(ts), "ts": ts, "kind": "job", "job": job_id, "display_id": display,
        "user": user, "queue": queue, "name": name, "old": old, "new": new, "reason": reason,
    }  # fmt: skip


def stored_event(c: JobChange) -> Event:
    display = f"{c.array_parent}_{c.array_index}" if c.array_parent is not None else str(c.job_id)
    return job_event(c.ts, c.job_id, display, c.old, c.new, c.reason, c.user, c.queue, c.name)


class ChangeFeed:
    """Turns the services' change notifications into events, for followers and listeners."""

    def __init__(self) -> None:
        self.bus = EventBus()
        self._jobs: dict[int, str] = {}  # job id -> its last state, while not final
        self._hosts: dict[str, str] = {}
        # Told of every event, followed or not, with its job (the notifications).
        self.listeners: list[Listener] = []

    def preload(self, jobs: Iterable[JobRecord], hosts: Iterable[HostRuntime]) -> None:
        """What a (re)started controller already had: their next change has an old state."""
        for job in jobs:
            self._jobs[job.id] = str(job.state)
        for host in hosts:
            self._hosts[host.name] = host_state(host)

    def job_changed(self, job: JobRecord) -> None:
        new = str(job.state)
        old = self._jobs.get(job.id)
        if old == new:
            return  # a new pending reason, not a change of state
        if job.state.is_final:
            self._jobs.pop(job.id, None)
        else:
            self._jobs[job.id] = new
        if not (self.bus.watched or self.listeners):
            return
        event = job_event(
            time.time(), job.id, job.display_id, old, new, job.reason,
            job.user, job.queue, job.name,
        )  # fmt: skip
        self._emit(event, job)

    def host_changed(self, host: HostRuntime) -> None:
        new = host_state(host)
        old = self._hosts.get(host.name)
        if old == new:
            return
        self._hosts[host.name] = new
        if not (self.bus.watched or self.listeners):
            return
        now = time.time()
        reason = host.admin_reason if host.admin != AdminState.ACTIVE else host.reason
        event = {"time": iso(now), "ts": now, "kind": "host", "host": host.name,
                 "old": old, "new": new, "reason": reason}  # fmt: skip
        self._emit(event, None)

    def _emit(self, event: Event, job: JobRecord | None) -> None:
        self.bus.publish(event)
        for listen in self.listeners:
            listen(event, job)


Epoch = Annotated[
    Annotated[int | float, Field(ge=0, le=1e11)] | None,
    Field(description="seconds since the epoch (a number from 0)"),
]


class EventsArgs(OpArgs):
    user: Text = None
    queue: Text = None
    job: JobId = None
    states: Texts = None
    since: Epoch = None  # replay the stored history from then
    follow: Flag = None


def matches(event: Event, args: EventsArgs) -> bool:
    if args.job is not None and event.get("job") != args.job:
        return False
    if (args.user is not None or args.queue is not None) and event["kind"] != "job":
        return False
    if args.user is not None and event.get("user") != args.user:
        return False
    if args.queue is not None and event.get("queue") != args.queue:
        return False
    return not args.states or event["new"] in args.states


def redact(event: Event, caller: Caller) -> Event:
    """Another user's job: its id, queue and states only (the read model's rule,
    `sees_all`: its owner and administrators, the inventory's `admins` included)."""
    if event["kind"] != "job" or sees_all(caller, str(event.get("user"))):
        return event
    return {k: v for k, v in event.items() if k not in DETAILS}


class EventsStream:
    """The API's `events` stream: replay from the store, then follow the feed."""

    def __init__(self, feed: ChangeFeed, history: HistoryTable) -> None:
        self._feed = feed
        self._history = history

    def open(self, msg: Mapping[str, Any], caller: Caller) -> Callable[[Send], Awaitable[None]]:
        """Check the request (ApiError naming the argument), and return its stream."""
        args = parse_args("events", EventsArgs, msg)
        if args.since is None and not args.follow:
            raise ApiError("bad_request", "events: give since (a time to replay from) or follow")
        return partial(self.run, args, caller)

    async def run(self, args: EventsArgs, caller: Caller, send: Send) -> None:
        queue = subscribed = self._feed.bus.subscribe() if args.follow else None
        try:
            cutoff, recent = await self._replay(args, caller, send)
            while queue is not None:
                # What has come since the last write goes out in one write (one syscall),
                # and a short wait lets a burst gather first: a busy controller makes a
                # few writes a second per follower, not one per change.
                batch = [await queue.get()]
                await asyncio.sleep(GATHER_S)
                while not queue.empty():
                    batch.append(queue.get_nowait())
                out: list[Event] = []
                for event in batch:
                    if event is None or "kind" not in event:  # closed, or it fell behind
                        out += [] if event is None else [event]
                        queue = None
                        break
                    if event["ts"] < cutoff or (event.get("job"), event["new"]) in recent:
                        continue  # replayed from the store already
                    if matches(event, args):
                        out.append(redact(event, caller))
                if out:
                    await send(out)
        finally:
            if subscribed is not None:
                self._feed.bus.unsubscribe(subscribed)

    async def _replay(
        self, args: EventsArgs, caller: Caller, send: Send
    ) -> tuple[float, set[tuple[Any, str]]]:
        """Send the stored changes since `args.since`; returns when the replay began and
        the changes of its last second (a live event may repeat one of them)."""
        if args.since is None:
            return 0.0, set()
        cutoff = time.time()
        recent: set[tuple[Any, str]] = set()
        changes = await self._history.job_changes(
            float(args.since), user=args.user, queue=args.queue, job_id=args.job,
            states=args.states or (), limit=MAX_REPLAY,
        )  # fmt: skip
        out = []
        for change in changes:
            if change.ts >= cutoff - 1.0:
                recent.add((change.job_id, change.new))
            out.append(redact(stored_event(change), caller))
            if len(out) == 1000:
                await send(out)
                out = []
        if out:
            await send(out)
        return cutoff, recent
