"""Where the controller keeps its files and how it tunes its loops.

Resolved once at start-up from the command line and the environment, then
passed in explicitly: no module-level configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcbatch import locations
from hpcbatch.store.url import StoreUrl


def default_home() -> Path:
    """`$HPCBATCH_HOME`, else `~/.hpcbatch`."""
    return Path(locations.home_dir())


def default_socket(home: Path | None = None) -> Path:
    """`$HPCBATCH_SOCKET`, else `controller.sock` in the home."""
    return Path(locations.socket_path(str(home) if home else None))


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    home: Path
    inventory: Path
    socket: Path
    database: Path
    """The SQLite store's file (the default store; the file a sqlite:// store URL names)."""
    heartbeat_s: float = 5.0
    connect_timeout_s: float = 10.0
    kill_grace_s: float = 10.0
    reconnect_max_s: float = 30.0
    sync: str = "NORMAL"
    # A connected host that sends nothing (not even a heartbeat) this long is cut
    # off (None: 4 heartbeats, at least 10 s); one not heard from for
    # `down_after_s` is DOWN and its attempts end as host failures.
    link_timeout_s: float | None = None
    down_after_s: float = 120.0
    # `--metrics HOST:PORT`: serve Prometheus metrics there (over the inventory's
    # `[metrics] address`); None and no inventory address: off.
    metrics: str | None = None
    store: StoreUrl | None = None
    """Where the store is (`--store URL`); None: the SQLite file `database`."""
    standby: bool = False
    """Wait for another controller to lose the (PostgreSQL) store's lock, then take over."""

    @property
    def store_url(self) -> StoreUrl:
        return self.store or StoreUrl.sqlite(self.database)

    @property
    def silence_limit_s(self) -> float:
        if self.link_timeout_s is not None:
            return self.link_timeout_s
        return max(10.0, 4 * self.heartbeat_s)

    @classmethod
    def build(
        cls,
        inventory: Path,
        home: Path | None = None,
        socket: Path | None = None,
        database: Path | None = None,
        store: str | StoreUrl | None = None,
        **kw: object,
    ) -> ControllerSettings:
        """`store` (a URL) is the general form of `database` (a SQLite file), and wins."""
        home = home or default_home()
        url = StoreUrl.parse(store) if isinstance(store, str) else store
        if url is not None and url.path is not None:
            database = url.path
        return cls(
            home=home,
            inventory=inventory,
            socket=socket or default_socket(home),
            database=database or home / "hpcbatch.db",
            store=url,
            **kw,  # type: ignore[arg-type]
        )
