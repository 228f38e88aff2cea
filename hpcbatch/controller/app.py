"""The controller process: wires the store, the host links, the services and the API.

Start-up order: open the store, load the inventory, rebuild in-memory state
from the store, open the API, connect to the hosts, start the scheduler.
Shutdown runs the other way: stop taking requests, stop the scheduler, close
the SSH links (jobs keep running on the hosts), close the store.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from hpcbatch.controller.api import ApiServer
from hpcbatch.controller.arrays import ArrayTracker
from hpcbatch.controller.cluster import Cluster
from hpcbatch.controller.definitions import DefinitionService
from hpcbatch.controller.deps import DependencyTracker
from hpcbatch.controller.events import EventBus
from hpcbatch.controller.health import HostMonitor
from hpcbatch.controller.hosts import HostService
from hpcbatch.controller.jobs import JobService
from hpcbatch.controller.scheduling import SchedulerLoop
from hpcbatch.controller.settings import ControllerSettings
from hpcbatch.controller.submission import Submitter
from hpcbatch.inventory import ResolvedInventory, load_inventory
from hpcbatch.store.db import Store
from hpcbatch.transport.link import HostLink, LinkSettings, SshTarget, agent_source, connect_gate

log = logging.getLogger(__name__)


def ssh_target(spec: Any, namespace: str) -> SshTarget:
    return SshTarget(
        name=spec.name,
        address=spec.address,
        port=spec.port,
        user=spec.user,
        identity=str(spec.identity) if spec.identity else None,
        known_hosts=str(spec.known_hosts) if spec.known_hosts else None,
        ssh_config=str(spec.ssh_config) if spec.ssh_config else None,
        work_dir=spec.work_dir,
        python=spec.python,
        namespace=f"c-{namespace}",
    )


class ControllerError(RuntimeError):
    """The controller cannot start; the message says why."""


def _lock_store(database: Path) -> int:
    """One controller per store: a second one would launch every job twice."""
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ControllerError(f"cannot create {database.parent}: {exc.strerror or exc}") from None
    path = database.with_name(database.name + ".lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ControllerError(
            f"cannot open the store's lock file {path}: {exc.strerror or exc} "
            "(the controller must be able to write its store's directory)"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ControllerError(
            f"another controller is already using the store {database} (lock {path})"
        ) from None
    return fd


class Controller:
    """One controller. Use `async with Controller.open(settings)` or `run()`."""

    def __init__(
        self, settings: ControllerSettings, inventory: ResolvedInventory, store: Store
    ) -> None:
        self.settings = settings
        self.inventory = inventory
        self.store = store
        self.bus = EventBus()
        self.cluster = Cluster(inventory)
        self.links: dict[str, HostLink] = {}
        self.jobs = JobService(store, self.cluster, self.bus, self.links, settings, self._wake)
        self.hosts = HostService(store, self.cluster, self.bus, self.jobs)
        self.monitor = HostMonitor(self.hosts, self.links, settings)
        self.hosts.on_connect = self.monitor.on_connect
        self.definitions = DefinitionService(store)
        self.arrays = ArrayTracker(
            store,
            self.jobs.publish,
            self.jobs.array_parents,
            self.jobs.resolve_waiters,
            self.jobs.spawn,
        )
        self.deps = DependencyTracker(self.jobs, self.arrays)
        self.jobs.observers.append(self.arrays.child_changed)
        self.submitter = Submitter(self.jobs, self.arrays, self.deps)
        self.scheduler = SchedulerLoop(self.jobs)
        self.api = ApiServer(self, settings.socket)
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._lock_fd: int | None = None

    def _wake(self) -> None:
        self.scheduler.wake()

    @classmethod
    async def create(cls, settings: ControllerSettings) -> Controller:
        inventory = load_inventory(settings.inventory)
        lock = _lock_store(settings.database)
        store = await Store.open(settings.database, sync=settings.sync)  # type: ignore[arg-type]
        controller = cls(settings, inventory, store)
        controller._lock_fd = lock
        return controller

    async def start(self) -> None:
        await self.jobs.load()
        await self.submitter.load()
        await self.scheduler.ledger.load(self.store, time.time())
        await self.hosts.load()
        for name, (state, _reason) in (await self.store.admin.queue_states()).items():
            if name in self.cluster.queue_enabled:
                self.cluster.queue_enabled[name] = state == "ENABLED"
        await self.api.start()
        link_settings = LinkSettings(
            connect_timeout_s=self.settings.connect_timeout_s,
            heartbeat_s=self.settings.heartbeat_s,
            backoff_max_s=self.settings.reconnect_max_s,
        )
        # One agent archive and one connect gate for all links (building the archive
        # per link cost 6.5 ms each: half a minute of start-up at 5,000 hosts).
        source = agent_source()
        gate = connect_gate(link_settings)
        for name, spec in self.inventory.hosts.items():
            link = HostLink(
                ssh_target(spec, self.store.cluster_id),
                self.hosts,
                settings=link_settings,
                source=source,
                gate=gate,
            )
            self.links[name] = link
            link.start()
        self.scheduler.start()
        self.monitor.start()
        log.info(
            "controller up: %d hosts, %d active jobs, socket %s",
            len(self.links),
            len(self.jobs.active),
            self.settings.socket,
        )

    async def set_queue_state(self, name: str, enabled: bool, reason: str | None) -> None:
        """Enable or disable a queue (kept across restarts; overrides the inventory).

        A disabled queue keeps its jobs and starts none; running jobs go on.
        """
        state = "ENABLED" if enabled else "DISABLED"
        await self.store.admin.set_queue(name, state, reason, time.time())
        self.cluster.queue_enabled[name] = enabled
        self.bus.publish({"event": "queue", "queue": name, "state": state})
        self._wake()

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Clean shutdown in order; jobs keep running on the hosts."""
        await self.api.stop()
        await self.monitor.stop()
        await self.scheduler.stop()
        await self.jobs.drain_tasks()
        await asyncio.gather(*(link.close() for link in self.links.values()))
        self.bus.close()
        await self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("controller stopped")


async def run_controller(settings: ControllerSettings) -> None:
    """Run until SIGTERM/SIGINT or an admin `shutdown` request."""
    controller = await Controller.create(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, controller.request_stop)
    try:
        await controller.start()
        await controller.wait_stopped()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await controller.stop()
