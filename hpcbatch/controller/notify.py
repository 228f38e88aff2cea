"""Notifications: job mail (`--mail-type`, `--mail-user`) and signed webhooks, through an outbox.

Where events come from. A job's transitions are in the store before anyone
hears of them, so the notifier reads them from there (`store.history`), from
its mark (how far it has read) on, and turns each into the deliveries it
calls for (pure: `deliveries`). It enqueues them in the outbox and moves the
mark in one transaction, so a crash anywhere loses nothing: after a restart
it reads again from the mark. Host changes are not stored; they are enqueued
from the live feed (a crash in the instant between loses them).

Delivery. The outbox's due rows are sent (mail through the host's
`sendmail` or an SMTP server; webhooks as HTTP POSTs, a batch at a time on
the HTTP worker's own thread, webhttp.py) and marked delivered in one
transaction per batch after success; a failure is retried with exponential backoff and jitter
(from 2 s to 10 min). A delivery is never repeated once marked; a crash
between sending and marking repeats it once, with the same idempotency key
(`Idempotency-Key` header, the mail's `Message-ID`), so receivers can drop
the repeat.

The loop is woken by the change feed (an event that may call for a
delivery) and by its own next retry; it never runs inside the job service's
hot path, which only sets an asyncio.Event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import smtplib
import time
from collections.abc import Iterable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from hpcbatch.controller.changes import Event, stored_event
from hpcbatch.controller.webhttp import HttpError, HttpWorker, Post
from hpcbatch.core.records import JobRecord
from hpcbatch.models import NotificationsSpec, WebhookSpec
from hpcbatch.store.db import Store
from hpcbatch.store.history import JobChange
from hpcbatch.store.outbox import OutboxItem, OutboxRow

log = logging.getLogger(__name__)

# Re-read this much before the mark: a transition's time is taken before it waits for
# the store's writer, so times are not quite in commit order (more after a restart).
OVERLAP_S, RESTART_OVERLAP_S = 0.5, 10.0
MIN_GAP_S = 0.2  # between two reads of the history: a burst of changes costs one read
IDLE_S = 30.0  # the longest between two reads
MARK_EVERY_S = 10.0  # the mark alone (nothing to enqueue) is written at most this often
BATCH = 5000
BACKOFF_MIN_S, BACKOFF_MAX_S = 2.0, 600.0
SEND_TIMEOUT_S = 15.0
DELIVERY_BATCH, IN_FLIGHT = 200, 8
SIGNATURE_HEADER = "X-Hpcbatch-Signature"
ALL_MAIL = frozenset({"BEGIN", "END", "FAIL", "REQUEUE", "INVALID_DEPEND", "TIME_LIMIT"})


class NotifyError(Exception):
    """One delivery failed; it is retried."""


# --------------------------------------------------------------------------- deciding (pure)


def mail_reasons(types: str | None, old: str | None, new: str) -> list[str]:
    """The `--mail-type` words a change satisfies (none: no mail)."""
    if not types:
        return []
    wanted = set(types.split(","))
    if "ALL" in wanted:
        wanted |= ALL_MAIL
    hits = []
    if new == "RUNNING" and "BEGIN" in wanted:
        hits.append("BEGIN")
    if new in ("SUCCEEDED", "FAILED") and "END" in wanted:
        hits.append("END")
    if new == "FAILED" and "FAIL" in wanted:
        hits.append("FAIL")
    if new == "RUNNABLE" and old in ("STARTING", "RUNNING") and "REQUEUE" in wanted:
        hits.append("REQUEUE")
    return hits


def webhook_wants(hook: WebhookSpec, event: Event) -> bool:
    if not hook.events:
        return True
    return ("host" if event["kind"] == "host" else event["new"]) in hook.events


def event_key(event: Event) -> str:
    who = f"job{event['job']}" if event["kind"] == "job" else f"host-{event['host']}"
    return f"{who}:{event['new']}:{event['ts']!r}"


def deliveries(
    event: Event, request: dict[str, Any] | None, hooks: Iterable[WebhookSpec], domain: str | None
) -> list[OutboxItem]:
    """What one event calls for: a mail to the job's user, a POST to each matching webhook."""
    key = event_key(event)
    out = [
        OutboxItem(f"webhook:{hook.name}:{key}", "webhook", hook.name, json.dumps(event))
        for hook in hooks
        if webhook_wants(hook, event)
    ]
    if event["kind"] == "job" and request:
        why = mail_reasons(request.get("mail_type"), event["old"], event["new"])
        if why:
            to = request.get("mail_user") or (
                f"{event['user']}@{domain}" if domain else event["user"]
            )
            body = json.dumps({**event, "mail_types": why})
            out.append(OutboxItem(f"mail:{key}", "mail", to, body))
    return out


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff(attempts: int) -> float:
    delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(attempts, 20))
    return float(delay * (0.5 + random.random() / 2))


def mail_message(sender: str, to: str, key: str, event: dict[str, Any]) -> EmailMessage:
    msg = EmailMessage()
    job = event.get("display_id", event.get("job"))
    what = event["new"] if event["new"] != "RUNNING" else "began"
    msg["Subject"] = f"hpcbatch job {job} ({event.get('name')}) {what}"
    msg["From"] = sender
    msg["To"] = to
    msg["Message-ID"] = f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@hpcbatch>"
    lines = [
        f"Job {job} ({event.get('name')}) of {event.get('user')} in queue {event.get('queue')}"
    ]
    lines.append(f"{event['old']} -> {event['new']} at {event['time']}")
    if event.get("reason"):
        lines.append(f"reason: {event['reason']}")
    lines.append(f"(mail type: {', '.join(event.get('mail_types', []))})")
    msg.set_content("\n".join(lines) + "\n")
    return msg


# --------------------------------------------------------------------------- sending


class Notifier:
    """The outbox's filler and sender: a background loop (start, wake, stop)."""

    def __init__(
        self, store: Store, spec: NotificationsSpec, hooks: Iterable[WebhookSpec], base: Path
    ) -> None:
        self._store = store
        self._spec = spec
        self._hooks = {h.name: h for h in hooks}
        self._secrets = {h.name: _secret(h, base) for h in self._hooks.values()}
        self._wake = asyncio.Event()
        self._sending = asyncio.Semaphore(IN_FLIGHT)
        self._http = HttpWorker(IN_FLIGHT, SEND_TIMEOUT_S)  # webhooks, on their own thread
        self._hosts: list[Event] = []  # host events not yet in the outbox
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._overlap = RESTART_OVERLAP_S
        self._mark: float | None = None  # in memory; in the store with each enqueue
        self._mark_written = 0.0
        self._recent: set[tuple[int, str, float]] = set()  # read within the overlap
        self.sent = 0

    def reconfigure(
        self, spec: NotificationsSpec, hooks: Iterable[WebhookSpec], base: Path
    ) -> None:
        """The inventory read again (`hpcbatch reload`): mail settings and webhooks for
        what is sent from now on. Deliveries already in the outbox go to their webhook's
        new address; those of a webhook no longer listed are dropped as they come up.
        A secret file that cannot be read raises NotifyError and changes nothing."""
        named = {h.name: h for h in hooks}
        secrets = {h.name: _secret(h, base) for h in named.values()}
        self._spec, self._hooks, self._secrets = spec, named, secrets
        self._wake.set()

    def on_event(self, event: Event, job: JobRecord | None) -> None:
        """The change feed's listener. A job's change is read back from the store, when
        it may call for something: with no webhook and no mail asked, nothing runs."""
        wanted = any(webhook_wants(h, event) for h in self._hooks.values())
        if event["kind"] == "host":
            if wanted:
                self._hosts.append(event)
                self._wake.set()
        elif wanted or (job is not None and job.request.get("mail_type")):
            self._wake.set()

    def _hooked(self, state: str) -> bool:
        """Whether some webhook takes a job's change to `state` (before an event is made)."""
        return any(not h.events or state in h.events for h in self._hooks.values())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notifier")
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self._http.close()

    async def _run(self) -> None:
        delay = 1.0
        while not self._stopping:
            try:
                await self.collect()
                await self.deliver()
                delay = 1.0
                # An idle look now and then keeps the mark near (a restart re-reads less).
                wait = await self._store.outbox.next_due()
                timeout = IDLE_S if wait is None else min(IDLE_S, max(0.05, wait - time.time()))
            except Exception:
                log.exception("notifications: the outbox failed; retrying")
                timeout, delay = delay, min(delay * 2, 60.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if not self._stopping:
                await asyncio.sleep(MIN_GAP_S)
            self._wake.clear()

    async def collect(self) -> None:
        """Read the job changes since the mark into the outbox (with waiting host events)."""
        outbox = self._store.outbox
        now = time.time()
        mark = self._mark if self._mark is not None else await outbox.mark()
        if mark is None:  # the first run on this store: from now on, not its whole past
            await outbox.enqueue([], now, now)
            mark = now
        hooks, domain = list(self._hooks.values()), self._spec.mail_domain
        items: list[OutboxItem] = []
        hosts, self._hosts = self._hosts, []
        for event in hosts:
            items += deliveries(event, None, hooks, domain)
        since = mark - self._overlap
        self._overlap = OVERLAP_S
        changes = await self._store.history.job_changes(since, limit=BATCH, requests=True)
        recent = {k for k in self._recent if k[2] >= since}
        for change in changes:
            key = (change.job_id, change.new, change.ts)
            if key not in recent:
                recent.add(key)
                request = _request(change)
                if request is not None or self._hooked(change.new):
                    items += deliveries(stored_event(change), request, hooks, domain)
        self._recent = recent
        new_mark = max([mark, *(c.ts for c in changes)])
        if items or (new_mark != mark and now - self._mark_written > MARK_EVERY_S):
            await outbox.enqueue(items, now, new_mark)
            self._mark_written = now
        self._mark = new_mark
        if len(changes) == BATCH:
            self._wake.set()  # more to read

    async def deliver(self) -> None:
        """Send what is due, a few at once, and record each batch in one transaction."""
        outbox = self._store.outbox
        while not self._stopping:
            rows = await outbox.due(time.time(), limit=DELIVERY_BATCH)
            if not rows:
                return
            results = await self._try_all(rows)
            now = time.time()
            ok = [row.key for row, why in zip(rows, results, strict=True) if why is None]
            failed = [
                (row.key, now + backoff(row.attempts), why)
                for row, why in zip(rows, results, strict=True)
                if why is not None
            ]
            await outbox.settle(ok, failed, now)
            self.sent += len(ok)
            if failed:
                return  # the rest waits for the next round (a receiver may be down)

    async def _try_all(self, rows: list[OutboxRow]) -> list[str | None]:
        """Each row's delivery: None when it succeeded, else why not. Webhooks go to the
        HTTP worker's thread as one batch; mail is sent here."""
        results: dict[str, str | None] = {}
        hooks = [(row, self._post(row)) for row in rows if row.channel == "webhook"]
        ready = [(row, post) for row, post in hooks if not isinstance(post, str)]
        for row, post in hooks:
            if isinstance(post, str):
                results[row.key] = post
        answers = await self._http.post_many([post for _row, post in ready])
        for (row, post), answer in zip(ready, answers, strict=True):
            results[row.key] = _outcome(row, post.url, answer)
        mails = [row for row in rows if row.channel != "webhook"]
        for row, why in zip(
            mails, await asyncio.gather(*(self._try(r) for r in mails)), strict=True
        ):
            results[row.key] = why
        return [results[row.key] for row in rows]

    def _post(self, row: OutboxRow) -> Post | str:
        """A webhook row's POST (signed), or why it cannot be made."""
        hook = self._hooks.get(row.target)
        if hook is None:
            return f"webhook {row.target} is no longer in the inventory"
        body = row.body.encode()
        kind = "host" if row.key.startswith(f"webhook:{hook.name}:host-") else "job"
        headers = {"Idempotency-Key": row.key, "X-Hpcbatch-Event": kind}
        secret = self._secrets[hook.name]
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, body)
        return Post(hook.url, body, headers)

    async def _try(self, row: OutboxRow) -> str | None:
        """One delivery: None when it succeeded, else why not."""
        async with self._sending:
            try:
                async with asyncio.timeout(SEND_TIMEOUT_S):  # no task per delivery
                    await self._send(row)
            except (OSError, TimeoutError, NotifyError, HttpError, smtplib.SMTPException) as exc:
                why = str(exc) or type(exc).__name__
                log.warning("notification %s failed (try %d): %s", row.key, row.attempts + 1, why)
                return why
        return None

    async def _send(self, row: OutboxRow) -> None:
        msg = mail_message(self._spec.sender, row.target, row.key, json.loads(row.body))
        await self._mail(msg)

    async def _mail(self, msg: EmailMessage) -> None:
        spec = self._spec
        if spec.smtp:
            host, _, port = spec.smtp.rpartition(":")

            def send() -> None:
                with smtplib.SMTP(host, int(port), timeout=SEND_TIMEOUT_S) as smtp:
                    smtp.send_message(msg)

            await asyncio.to_thread(send)
            return
        proc = await asyncio.create_subprocess_exec(
            spec.sendmail, "-t", "-oi",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate(msg.as_bytes())
        if proc.returncode != 0:
            raise NotifyError(f"{spec.sendmail}: exit {proc.returncode}: {out.decode()[:200]}")


def _outcome(row: OutboxRow, url: str, answer: int | BaseException) -> str | None:
    """A POST's answer as a delivery's outcome: None (delivered) or why not (logged)."""
    if isinstance(answer, int):
        if 200 <= answer < 300:
            return None
        why = f"{url}: HTTP {answer}"
    elif isinstance(answer, Exception):  # refused, reset, timed out, not HTTP...
        why = str(answer) or type(answer).__name__
    else:
        raise answer  # cancelled: the controller is stopping
    log.warning("notification %s failed (try %d): %s", row.key, row.attempts + 1, why)
    return why


def _request(change: JobChange) -> dict[str, Any] | None:
    """The job's request, read only when it asks for mail (most do not)."""
    text = change.request
    if not text or ('"mail_type":"' not in text and '"mail_type": "' not in text):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _secret(hook: WebhookSpec, base: Path) -> str | None:
    if hook.secret is not None:
        return hook.secret
    if hook.secret_file is None:
        return None
    path = Path(hook.secret_file).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise NotifyError(
            f"webhook {hook.name}: cannot read secret_file {path}: {exc.strerror}"
        ) from None
