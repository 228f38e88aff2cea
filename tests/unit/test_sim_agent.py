"""The simulated agent speaks the real agent's protocol: replies, events, errors, state."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from hpcbatch.transport.agent.protocol import BadRequest
from hpcbatch.transport.sim.agent import SimAgent, SimHostState, job_duration, job_exit_code


class Wire:
    """Both ends of one agent channel, in memory."""

    def __init__(self, host: SimHostState, heartbeat: float = 0.0) -> None:
        self.lines: list[dict[str, Any]] = []
        self.closed = False
        self.agent = SimAgent(host, heartbeat, self._write, self._close)

    def _write(self, data: bytes) -> None:
        self.lines += [json.loads(x) for x in data.decode().splitlines()]

    def _close(self) -> None:
        self.closed = True

    def send(self, **req: Any) -> dict[str, Any]:
        self.agent.data_received((json.dumps(req) + "\n").encode())
        return self.lines[-1]

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [x for x in self.lines if x.get("ev") == kind]


def test_duration_and_exit_code_come_from_the_script() -> None:
    assert job_duration("#!/bin/sh\nsleep 0.5\necho; sleep 2\n", {}) == 2.5
    assert job_duration("#!/bin/sh\ntrue\n", {}) == 0.0
    assert job_duration("sleep 9", {"HPCBATCH_SIM_DURATION": "0.1"}) == 0.1
    with pytest.raises(BadRequest, match="HPCBATCH_SIM_DURATION"):
        job_duration("", {"HPCBATCH_SIM_DURATION": "soon"})
    assert job_exit_code("#!/bin/sh\nexit 3\n") == 3
    assert job_exit_code("#!/bin/sh\ntrue\n") == 0


async def test_launch_exit_ack_and_hello_after_reconnect() -> None:
    host = SimHostState("h1", cpus=4)
    wire = Wire(host)
    hello = wire.send(id=0, op="hello")
    assert hello["ok"] and hello["facts"]["cpus"] == 4 and hello["attempts"] == []
    reply = wire.send(id=1, op="launch", attempt="7.1.0", script="sleep 0.05\nexit 2")
    assert reply["id"] == 1 and reply["ok"] and reply["pid"] > 0 and reply["started"] > 0
    again = wire.send(id=2, op="launch", attempt="7.1.0", script="true")
    error = {"id": 2, "ok": False, "error": "attempt 7.1.0 already exists", "code": "exists"}
    assert again == error
    await asyncio.sleep(0.15)
    (exit_ev,) = wire.events("exit")
    assert exit_ev["attempt"] == "7.1.0" and exit_ev["code"] == 2 and exit_ev["signal"] is None
    # A new agent (reconnect) lists what is not yet acknowledged, as on disk.
    wire2 = Wire(host)
    listed = wire2.send(id=0, op="hello")["attempts"]
    assert [(a["attempt"], a["state"]) for a in listed] == [("7.1.0", "exited")]
    assert wire2.send(id=1, op="ack", attempts=["7.1.0"])["acked"] == ["7.1.0"]
    assert wire2.send(id=2, op="hello")["attempts"] == []


async def test_kill_timeout_fence_and_errors() -> None:
    host = SimHostState("h1")
    wire = Wire(host)
    wire.send(id=1, op="launch", attempt="1.1.0", script="sleep 60")
    wire.send(id=2, op="launch", attempt="2.1.0", script="sleep 60", timeout_s=0.05)
    wire.send(id=3, op="launch", attempt="3.1.0", script="sleep 60")
    assert wire.send(id=4, op="kill", attempt="1.1.0", reason="cancelled")["found"] is True
    await asyncio.sleep(0.15)  # 1.1.0 dies of its kill, 2.1.0 of its time limit
    assert wire.send(id=5, op="fence", keep=[])["killed"] == ["3.1.0"]
    await asyncio.sleep(0.01)
    ends = {e["attempt"]: e for e in wire.events("exit")}
    assert ends["1.1.0"]["reason"] == "cancelled" and ends["1.1.0"]["signal"] == 15
    assert ends["2.1.0"]["timed_out"] is True
    assert ends["3.1.0"]["reason"] == "fenced"
    bad = wire.send(id=6, op="kill", attempt="../x")
    assert "bad attempt id" in bad["error"] and bad["code"] == "bad_request"
    unknown = wire.send(id=7, op="frobnicate")
    assert "unknown op" in unknown["error"] and unknown["code"] == "unknown_op"
    assert "no rsh relay" in wire.send(id=8, op="rspawn")["error"]
    wire.send(id=-1, op="rkill")  # posted: no reply, an error event
    assert wire.lines[-1]["ev"] == "error" and "id" not in wire.lines[-1]
    assert wire.lines[-1]["code"] == "bad_request"
    assert wire.send(id=9, op="exec", argv=["false"])["code"] == 1
    assert wire.send(id=10, op="shutdown") == {"id": 10, "ok": True}
    assert wire.closed


async def test_heartbeats_and_silence() -> None:
    host = SimHostState("h1")
    wire = Wire(host, heartbeat=0.02)
    await asyncio.sleep(0.11)
    beats = len(wire.events("heartbeat"))
    assert beats >= 3 and wire.events("heartbeat")[0]["running"] == 0
    host.silent = True
    await asyncio.sleep(0.1)
    assert len(wire.events("heartbeat")) == beats
    wire.agent.stop()


async def test_an_older_controller_epoch_is_refused_as_by_the_real_agent() -> None:
    host = SimHostState("h1")
    old, new = Wire(host), Wire(host)
    assert old.send(id=0, op="hello", epoch=3)["ok"]
    assert new.send(id=0, op="hello", epoch=4)["ok"] and host.epoch == 4
    refused = old.send(id=1, op="launch", attempt="1.1.0", script="true", epoch=3)
    assert (refused["ok"], refused["code"]) == (False, "stale_epoch")
    assert "1.1.0" not in host.attempts
    assert new.send(id=1, op="launch", attempt="1.1.0", script="true", epoch=4)["ok"]
