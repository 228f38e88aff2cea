"""Which changes call for mail and webhooks (pure), and how a webhook is signed."""

from __future__ import annotations

import hashlib
import hmac
import json

from hpcbatch.controller.notify import backoff, deliveries, mail_reasons, sign
from hpcbatch.models import WebhookSpec


def test_mail_reasons() -> None:
    assert mail_reasons(None, "RUNNING", "FAILED") == []
    assert mail_reasons("END", "RUNNING", "SUCCEEDED") == ["END"]
    assert mail_reasons("END,FAIL", "RUNNING", "FAILED") == ["END", "FAIL"]
    assert mail_reasons("FAIL", "RUNNING", "SUCCEEDED") == []
    assert mail_reasons("BEGIN", "STARTING", "RUNNING") == ["BEGIN"]
    assert mail_reasons("REQUEUE", "RUNNING", "RUNNABLE") == ["REQUEUE"]
    assert mail_reasons("REQUEUE", None, "RUNNABLE") == []  # a new job, not a retry
    assert mail_reasons("ALL", "RUNNING", "FAILED") == ["END", "FAIL"]
    assert mail_reasons("NONE", "RUNNING", "FAILED") == []


def event(new: str, kind: str = "job") -> dict[str, object]:
    return {"kind": kind, "job": 3, "host": "n1", "user": "ann", "new": new, "old": "RUNNING",
            "ts": 1.5, "time": "t", "name": "x", "queue": "q"}  # fmt: skip


def test_deliveries() -> None:
    hooks = [
        WebhookSpec(name="all", url="http://h/a"),
        WebhookSpec(name="fails", url="http://h/b", events=["FAILED", "host"]),
    ]
    request = {"mail_type": "END"}
    items = deliveries(event("FAILED"), request, hooks, "example.org")
    assert [(i.channel, i.target) for i in items] == [
        ("webhook", "all"), ("webhook", "fails"), ("mail", "ann@example.org"),
    ]  # fmt: skip
    assert items[0].key == "webhook:all:job3:FAILED:1.5" and items[2].key == "mail:job3:FAILED:1.5"
    assert json.loads(items[2].body)["mail_types"] == ["END"]
    items = deliveries(event("SUCCEEDED"), {"mail_type": "END", "mail_user": "a@b"}, hooks, None)
    assert [(i.channel, i.target) for i in items] == [("webhook", "all"), ("mail", "a@b")]
    assert [i.target for i in deliveries(event("DOWN", "host"), None, hooks, None)] == [
        "all", "fails",
    ]  # fmt: skip
    assert [i.target for i in deliveries(event("RUNNING"), {}, hooks[1:], None)] == []


def test_signature_and_backoff() -> None:
    body = b'{"kind":"job"}'
    want = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign("s3cret", body) == "sha256=" + want
    assert 1.0 <= backoff(0) <= 2.0 and 300 <= backoff(30) <= 600
