"""Hostile client messages against a running controller: clear errors, no crash, no
partial writes.

The controller runs in its own thread and loop (as it would serve any client);
hypothesis sends random bytes, random JSON and random requests for the real
operations over the real Unix socket. Every line gets one JSON reply; after
each example the controller still answers `ping`; a refused submission adds no
row to the store and an accepted one is whole (its job, its transitions).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcbatch.controller.app import Controller
from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import short_home
from tests.integration.conftest import test_settings as controller_settings

pytestmark = pytest.mark.sshd

# Every operation but those that stop the controller, stream, block, or take hosts
# out of service (their refusals are tested elsewhere).
OPS = ["ping", "submit", "submit_argv", "jobs", "show", "cancel", "logs", "hosts", "queues",
       "register", "definitions", "definition", "deregister", "queue_update", "drain", "resume",
       "nope", None, 7]  # fmt: skip
SAFE_SCRIPTS = ["#!/bin/sh\ntrue\n", "true", "#!/bin/sh\nexit 3\n"]

_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["", "node1", "batch", "1-3%1", "afterok:1", "4G", "USR1", "*", "\0"])
)
_json = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_request_keys = st.sampled_from(
    ["name", "queue", "cpus", "memory_mb", "gpus", "nodes", "time_limit_s", "env", "args",
     "array", "dependency", "retry", "warn_signal", "node_ranges", "exclusive", "workdir",
     "output", "main_node", "launch_mode", "definition", "bogus"]
)  # fmt: skip
_submit_request = st.dictionaries(_request_keys, _json, max_size=6).flatmap(
    lambda d: st.sampled_from(SAFE_SCRIPTS).map(lambda s: {**d, "script": s})
)
_args = st.dictionaries(
    st.sampled_from(["job_id", "job_ids", "ids", "states", "user", "queue", "host", "reason",
                     "ref", "definition", "stream", "offset", "node", "attempt", "all", "state",
                     "argv", "cwd", "env", "script", "script_for"]),
    _json,
    max_size=4,
)  # fmt: skip
_message = st.builds(
    lambda op, args, rid, req: {
        **args,
        "op": op,
        "id": rid,
        **({"request": req} if op == "submit" else {}),
    },
    st.sampled_from(OPS),
    _args,
    _json,
    _submit_request,
)
_line = (
    _message.map(lambda m: json.dumps(m).encode())
    | _json.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" "))
    | st.sampled_from([b"{", b"[]", b'{"op": "submit"}', b"\xff\xfe", b"null", b'"x"', b" "])
)


class Live:
    """A controller serving from its own thread."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.home = short_home()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.controller: Controller = self.run(self._start(sandbox))

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def _start(self, sandbox: Sandbox) -> Controller:
        c = await Controller.create(controller_settings(sandbox.inventory, self.home))
        await c.start()
        return c

    def close(self) -> None:
        self.run(self.controller.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def exchange(self, lines: list[bytes]) -> list[dict[str, Any]]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(str(self.controller.settings.socket))
            sock.sendall(b"".join(line + b"\n" for line in lines))
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return [json.loads(x) for x in data.splitlines()]

    def count_jobs(self) -> int:
        with contextlib.closing(
            sqlite3.connect(f"file:{self.controller.settings.database}?mode=ro", uri=True)
        ) as db:
            return int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


@pytest.fixture(scope="module")
def live(sandbox: Sandbox) -> Iterator[Live]:
    server = Live(sandbox)
    try:
        yield server
    finally:
        server.close()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(_line, min_size=1, max_size=4))
def test_hostile_messages(live: Live, lines: list[bytes]) -> None:
    before = live.count_jobs()
    replies = live.exchange(lines)
    assert len(replies) == len([x for x in lines if x.strip()]) or len(replies) == len(lines)
    accepted = 0
    for reply in replies:
        assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
        if not reply["ok"]:
            assert reply["kind"] in {"bad_request", "not_found", "forbidden", "infeasible",
                                     "unavailable", "timeout"}, reply  # fmt: skip
            assert isinstance(reply["error"], str) and reply["error"], reply
        elif isinstance(reply.get("result"), dict) and "job_id" in reply["result"]:
            accepted += 1
            shown = live.exchange(
                [json.dumps({"op": "show", "job_id": reply["result"]["job_id"]}).encode()]
            )
            assert shown[0]["ok"] and shown[0]["result"]["transitions"], shown
    after = live.count_jobs()
    assert (after > before) if accepted else (after == before), (before, after, replies)
    (pong,) = live.exchange([b'{"op": "ping", "id": 1}'])
    assert pong["ok"], pong


def test_store_is_whole_after_the_fuzzing(live: Live) -> None:
    path = Path(live.controller.settings.database)
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        orphans = db.execute(
            "SELECT COUNT(*) FROM jobs WHERE id NOT IN (SELECT job_id FROM transitions)"
        ).fetchone()[0]
        assert orphans == 0
