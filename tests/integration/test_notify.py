"""Job mail to a real SMTP sink (aiosmtpd) and signed webhooks to a real HTTP server, through
a controller SIGKILL: every notification arrives, and none twice."""

from __future__ import annotations

import contextlib
import email
import hashlib
import hmac
import json
import socket
import subprocess
import threading
import time
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller as SmtpController

from hpcbatch.client import Client
from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import short_home
from tests.integration.test_faults import _client, _run_controller

pytestmark = pytest.mark.sshd

SECRET = "a-webhook-secret-of-some-length"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MailSink:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 OK"


class HookSink(ThreadingHTTPServer):
    def __init__(self, port: int) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                sink.posts.append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", port), Handler)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_mail_and_webhooks_survive_a_controller_sigkill(sandbox: Sandbox) -> None:
    home = short_home()
    smtp_port, http_port = free_port(), free_port()
    inventory = home / "inventory.toml"
    inventory.write_text(
        sandbox.inventory.read_text()
        + f'\n[notifications]\nsmtp = "127.0.0.1:{smtp_port}"\nfrom = "batch@cluster"\n'
        + f'\n[[webhooks]]\nname = "ops"\nurl = "http://127.0.0.1:{http_port}/hook"\n'
        + f'events = ["RUNNING", "SUCCEEDED", "FAILED"]\nsecret = "{SECRET}"\n'
    )
    proc = _run_controller(inventory, home)
    # Both sinks are down until the controller is killed (a listening socket would take
    # a POST into its backlog: sent, and not answered before the kill).
    mail, hooks = MailSink(), None
    smtp = SmtpController(mail, hostname="127.0.0.1", port=smtp_port)
    try:
        with _client(home) as client:
            wait_for(lambda: sum(h["state"] == "UP" for h in client.call("hosts")) == 4, 30, "UP")
            ids = []
            for i in range(6):
                # quick ones end before the kill (their notifications wait in the outbox:
                # nothing listens yet), slow ones end while the controller is dead
                script = f"#!/bin/sh\nsleep {0 if i % 2 else 3}\nexit {(i % 3 == 0 and 1) or 0}\n"
                request = {"script": script, "name": f"n{i}", "mail_type": "END",
                           "mail_user": f"user{i}@example.org"}  # fmt: skip
                ids.append(client.call("submit", request=request)["job_id"])

            def ready() -> bool:
                states = [j["state"] for j in client.call("jobs", ids=ids)]
                quick_done = all(s in ("SUCCEEDED", "FAILED") for s in states[1::2])
                return quick_done and all(s == "RUNNING" for s in states[0::2])

            wait_for(ready, 30, "quick jobs final, slow ones running")
            time.sleep(0.5)  # the notifier has tried (and failed) to deliver
        proc.kill()  # SIGKILL
        proc.wait()
        smtp.start()
        hooks = HookSink(http_port)
        threading.Thread(target=hooks.serve_forever, daemon=True).start()
        proc = _run_controller(inventory, home)
        with _client(home) as client:
            finals = client.call("wait", job_ids=ids, timeout_s=60)
        with Client(home / "controller.sock") as reader:
            replay = list(reader.stream("events", since=0.0))
        wanted = {
            (e["job"], e["new"])
            for e in replay
            if e["job"] in ids and e["new"] in ("RUNNING", "SUCCEEDED", "FAILED")
        }
        posts = hooks.posts
        wait_for(lambda: len(mail.messages) >= 6 and len(posts) >= len(wanted), 90, "all")
        time.sleep(1.5)  # anything sent twice would come now
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(Exception):
            smtp.stop()
        if hooks is not None:
            hooks.shutdown()
            hooks.server_close()
    assert hooks is not None

    # Mail: one per job (END), to its --mail-user, saying how it ended.
    assert sorted(rcpt for rcpt, _ in mail.messages) == sorted(
        [[f"user{i}@example.org"] for i in range(6)]
    )
    for rcpt, msg in mail.messages:
        i = int(rcpt[0][4])
        job = finals[i]
        assert msg["From"] == "batch@cluster"
        assert f"job {job['id']} (n{i}) {job['state']}" in msg["Subject"]
    assert len({msg["Message-ID"] for _, msg in mail.messages}) == 6
    # Webhooks: each wanted event exactly once, signed with the secret.
    keys = [headers["Idempotency-Key"] for headers, _ in hooks.posts]
    assert len(keys) == len(set(keys)), "a webhook was delivered twice"
    got = set()
    for headers, body in hooks.posts:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Hpcbatch-Signature"], expected)
        event = json.loads(body)
        got.add((event["job"], event["new"]))
    assert got == wanted
    assert {(j["id"], j["state"]) for j in finals} <= got
