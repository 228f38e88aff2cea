"""The leader fence's parts, each real: the store's epoch and standbys on both engines
(store/leader.py), a PostgreSQL controller that reconnects after another one led,
and the agent's epoch file (transport/agent/epoch.py) on a temporary root."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.store.db import Store
from hpcbatch.store.engine import StoreError
from hpcbatch.store.leader import standby_row
from hpcbatch.store.url import StoreUrl
from hpcbatch.transport.agent.epoch import EpochFence
from hpcbatch.transport.agent.protocol import BadRequest
from tests.postgres_server import TemporaryPostgres


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = StoreUrl.sqlite(tmp_path / "hpcbatch.db")
    else:
        url = StoreUrl.parse(request.getfixturevalue("pg_url"))
    s = await Store.open(url, exclusive=True)
    try:
        yield s
    finally:
        await s.close()


async def test_each_lead_takes_a_larger_epoch_and_status_sees_it(store: Store) -> None:
    assert await store.leader.current() is None
    first = await store.take_lead("ctl1", 100, 1000.0)
    assert first.epoch >= 1_000_000  # not below the wall clock in ms: a restored store
    second = await store.take_lead("ctl2", 200, 999.0)  # a clock behind: still larger
    assert second.epoch == first.epoch + 1
    assert store.db.epoch == second.epoch
    assert await store.leader.current() == second


async def test_standbys_are_listed_while_they_say_so(store: Store) -> None:
    for host, pid, seen in (("ctl2", 7, 50.0), ("ctl3", 8, 95.0), ("ctl1", 100, 96.0)):
        key, value = standby_row(host, pid, seen)
        async with store.db.transaction() as tx:
            await tx.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
    assert [(s.host, s.pid) for s in await store.leader.standbys(90.0)] == [
        ("ctl1", 100),
        ("ctl3", 8),
    ]
    await store.take_lead("ctl1", 100, 3680.0)  # a standby that leads is none any more;
    seen = await store.leader.standbys(0.0)  # one silent for an hour is forgotten
    assert [(s.host, s.pid) for s in seen] == [("ctl3", 8)]


async def test_postgresql_a_reconnect_after_another_controller_led_is_the_lead_lost(
    pg_url: str, postgres: TemporaryPostgres
) -> None:
    """The lock was free again when this controller reconnected, but another one had led
    meanwhile (its epoch is in the store): what this one holds in memory is stale."""
    url = StoreUrl.parse(pg_url)
    old = await Store.open(url, exclusive=True)
    lost: list[str] = []
    db: Any = old.db
    db.on_lost = lost.append
    try:
        await old.take_lead("ctl1", 1, 1.0)
        database = pg_url.split("/")[3].split("?")[0]
        postgres.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        await asyncio.sleep(0.2)
        other = await Store.open(url, exclusive=True)
        await other.take_lead("ctl2", 2, 2.0)
        await other.close()
        with pytest.raises(StoreError, match="another controller led meanwhile"):
            await old.admin.set_queue("q", "DISABLED", None, 3.0)
        assert lost and "epoch" in lost[0]
    finally:
        await old.close()


def handler(calls: list[str]) -> Any:
    def run(req: dict[str, Any]) -> dict[str, Any]:
        calls.append(req["op"])
        return {}

    return run


def test_the_agent_keeps_the_highest_epoch_and_refuses_older_ones(tmp_path: Path) -> None:
    calls: list[str] = []
    ops = {op: handler(calls) for op in ("hello", "launch", "read")}
    EpochFence(str(tmp_path)).install(ops)
    ops["launch"]({"op": "launch"})  # no epoch (a tool, an older controller): not fenced
    ops["hello"]({"op": "hello", "epoch": 7})
    assert (tmp_path / "epoch").read_text() == "7\n"
    ops["launch"]({"op": "launch", "epoch": 7})
    with pytest.raises(BadRequest) as refused:
        ops["launch"]({"op": "launch", "epoch": 6})
    assert refused.value.code == "stale_epoch"
    ops["read"]({"op": "read", "epoch": 1})  # reads are not fenced
    for bad in (True, -1, "7", 7.5):
        with pytest.raises(BadRequest, match="epoch must be a non-negative integer"):
            ops["hello"]({"op": "hello", "epoch": bad})
    assert calls == ["launch", "hello", "launch", "read"]
    again: dict[str, Any] = {"launch": handler(calls)}  # a restarted agent remembers
    EpochFence(str(tmp_path)).install(again)
    with pytest.raises(BadRequest, match="has seen 7"):
        again["launch"]({"op": "launch", "epoch": 6})
    again["launch"]({"op": "launch", "epoch": 8})
    assert json.loads((tmp_path / "epoch").read_text()) == 8


def test_status_reads_as_the_docs_show_it() -> None:
    from hpcbatch.cli.status import render

    info = {
        "controller": {"host": "ctl2", "pid": 41877, "epoch": 1796651873301,
                       "since": 1796651873.3, "version": "0.1.0"},
        "standbys": [{"host": "ctl1", "pid": 52210, "seen": 1796652112.8}],
        "store": {"engine": "postgresql", "where": "postgresql://hpcbatch@db.example.org/hpcbatch"},
        "hosts": {"total": 4, "up": 4, "down": 0, "by_state": {"UP": 4}},
        "queue": {"depth": 12, "running": 8, "by_state": {"RUNNABLE": 12, "RUNNING": 8}},
    }  # fmt: skip
    text = render(info, 1796652113.9)
    docs = (Path(__file__).parents[2] / "docs" / "high-availability.md").read_text()
    assert text.splitlines()[1:] == [
        "standby on ctl1 pid 52210 (seen 1s ago)",
        "store: postgresql postgresql://hpcbatch@db.example.org/hpcbatch",
        "hosts: 4 up, 0 not up, of 4 (4 UP)",
        "queue: 12 waiting, 8 starting or running",
    ]
    for line in text.splitlines():
        assert line in docs, line
    info["standbys"] = []
    assert "standbys: none seen" in render(info, 1796652113.9)


async def test_postgresql_a_closed_store_refuses_a_late_write_without_reconnecting(
    pg_url: str,
) -> None:
    """What still runs of a stopped controller (a timer) writes after its store closed,
    while the next controller leads: refused, never made on a new connection."""
    url = StoreUrl.parse(pg_url)
    old = await Store.open(url, exclusive=True)
    lost: list[str] = []
    db: Any = old.db
    db.on_lost = lost.append
    await old.take_lead("ctl1", 1, 1.0)
    await old.close()
    new = await Store.open(url, exclusive=True)
    try:
        await new.take_lead("ctl1", 2, 2.0)
        with pytest.raises(StoreError, match="the store is closed"):
            await old.admin.set_queue("q", "DISABLED", None, 3.0)
        assert lost == [] and await new.admin.queue_states() == {}
    finally:
        await new.close()
