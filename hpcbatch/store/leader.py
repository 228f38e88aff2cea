"""Who leads the store: the active controller's epoch, and the standbys waiting.

Why it exists: with active/standby controllers (docs/high-availability.md) the
lead passes from one process to another, and both the hosts and the operators
must be able to tell one leader from the next. Each controller that becomes
active takes a new epoch here, in one transaction on the store it holds
exclusively: larger than the last one (and than the wall clock in
milliseconds, so that a store restored from a backup still gets an epoch
above any its hosts have seen). The epoch fences the hosts (the agents
refuse an older one: transport/agent/epoch.py) and the store (a controller
that reconnects finds a newer epoch and stops). The leader's host, pid and
start and each waiting standby's last sign of life are kept beside it for
`hpcbatch status`. All of it is rows of the `meta` table (key, value).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hpcbatch.store.engine import Engine, Tx

EPOCH_KEY = "epoch"
LEADER_KEY = "leader"
STANDBY_PREFIX = "standby:"
FORGET_STANDBY_S = 3600.0
"""A standby silent this long is dropped from the table when a controller takes the lead."""


@dataclass(frozen=True, slots=True)
class Leader:
    """The controller that took the lead last: its epoch, where it runs, since when."""

    epoch: int
    host: str
    pid: int
    since: float


@dataclass(frozen=True, slots=True)
class Standby:
    """A standby controller waiting for the lead, and when it last said so."""

    host: str
    pid: int
    seen: float


def standby_key(host: str, pid: int) -> str:
    return f"{STANDBY_PREFIX}{host}:{pid}"


def standby_row(host: str, pid: int, now: float) -> tuple[str, str]:
    """The (key, value) a waiting standby writes (postgres.py, while it waits)."""
    return standby_key(host, pid), json.dumps({"host": host, "pid": pid, "seen": now})


class LeaderTable:
    """The leadership rows of `meta`."""

    def __init__(self, db: Engine) -> None:
        self._db = db

    async def take(self, host: str, pid: int, now: float) -> Leader:
        """Become the leader: a new epoch above every earlier one. Only a controller
        holding the store exclusively calls this (its lock makes it the only writer)."""
        async with self._db.transaction() as tx:
            row = await (
                await tx.execute("SELECT value FROM meta WHERE key = ?", (EPOCH_KEY,))
            ).fetchone()
            epoch = max((int(row[0]) if row else 0) + 1, int(now * 1000))
            leader = Leader(epoch=epoch, host=host, pid=pid, since=now)
            value = json.dumps({"epoch": epoch, "host": host, "pid": pid, "since": now})
            for key, text in ((EPOCH_KEY, str(epoch)), (LEADER_KEY, value)):
                await tx.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, text),
                )
            await tx.execute("DELETE FROM meta WHERE key = ?", (standby_key(host, pid),))
            for standby in await self._standbys(tx):
                if standby.seen < now - FORGET_STANDBY_S:
                    await tx.execute(
                        "DELETE FROM meta WHERE key = ?", (standby_key(standby.host, standby.pid),)
                    )
        return leader

    async def current(self) -> Leader | None:
        row = await self._db.fetchone("SELECT value FROM meta WHERE key = ?", (LEADER_KEY,))
        if row is None:
            return None
        data = json.loads(row[0])
        return Leader(int(data["epoch"]), str(data["host"]), int(data["pid"]), float(data["since"]))

    async def standbys(self, seen_after: float) -> list[Standby]:
        """The standbys that said they wait since `seen_after`, by host and pid."""
        rows = await self._db.fetchall(
            "SELECT value FROM meta WHERE key LIKE ?", (STANDBY_PREFIX + "%",)
        )
        found = [_standby(r[0]) for r in rows]
        return sorted((s for s in found if s.seen >= seen_after), key=lambda s: (s.host, s.pid))

    @staticmethod
    async def _standbys(tx: Tx) -> list[Standby]:
        cursor = await tx.execute(
            "SELECT value FROM meta WHERE key LIKE ?", (STANDBY_PREFIX + "%",)
        )
        return [_standby(r[0]) for r in await cursor.fetchall()]


def _standby(value: str) -> Standby:
    data = json.loads(value)
    return Standby(str(data["host"]), int(data["pid"]), float(data["seen"]))
