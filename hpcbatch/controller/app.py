"""The controller process: wires the store, the host links, the services and the API.

Start-up order: open the store, load the inventory, rebuild in-memory state
from the store, open the API, connect to the hosts, start the scheduler.
Shutdown runs the other way: stop taking requests, stop the scheduler, close
the SSH links (jobs keep running on the hosts), close the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from hpcbatch.controller.api import ApiPolicy, ApiServer
from hpcbatch.controller.apiargs import Operation
from hpcbatch.controller.arrays import ArrayTracker
from hpcbatch.controller.callers import Admins, ApiError
from hpcbatch.controller.cancel import cancel_jobs
from hpcbatch.controller.changes import ChangeFeed, EventsStream
from hpcbatch.controller.cluster import Cluster, HostRuntime
from hpcbatch.controller.control import JobControl
from hpcbatch.controller.definitions import DefinitionService
from hpcbatch.controller.deps import DependencyTracker
from hpcbatch.controller.events import EventBus
from hpcbatch.controller.execs import ExecService
from hpcbatch.controller.handlers_admin import AdminHandlers, ControllerHooks
from hpcbatch.controller.handlers_definitions import DefinitionHandlers
from hpcbatch.controller.handlers_exec import ExecHandlers
from hpcbatch.controller.handlers_inventory import InventoryHandlers
from hpcbatch.controller.handlers_jobs import JobHandlers
from hpcbatch.controller.handlers_secrets import SecretHandlers
from hpcbatch.controller.health import HostMonitor
from hpcbatch.controller.hosts import HostService
from hpcbatch.controller.inventory_admin import InventoryAdmin
from hpcbatch.controller.jobs import JobService
from hpcbatch.controller.launcher import Launcher
from hpcbatch.controller.logcollect import LogCollector
from hpcbatch.controller.metrics import Metrics, MetricsError, MetricsServer
from hpcbatch.controller.notify import Notifier, NotifyError
from hpcbatch.controller.power import PowerManager
from hpcbatch.controller.readmodel import HostReads, ReadModel
from hpcbatch.controller.relay import RelayService
from hpcbatch.controller.retention import Retention
from hpcbatch.controller.scheduling import SchedulerLoop
from hpcbatch.controller.secrets import KEY_FILE, Sealer, SecretService
from hpcbatch.controller.settings import ControllerSettings
from hpcbatch.controller.steps import StepService
from hpcbatch.controller.submission import Submitter
from hpcbatch.core.states import POWER_STATES, HostState
from hpcbatch.inventory import InventoryError, ResolvedInventory, load_inventory
from hpcbatch.inventory_edit import Change, load_document
from hpcbatch.store.db import Leader, Store, lost_the_lead
from hpcbatch.transport.link import LinkSettings, SshTarget
from hpcbatch.transport.pool import HostPool

log = logging.getLogger(__name__)

STANDBY_FRESH_S = 10.0
"""`status` lists the standbys that said they wait this recently (they say so every 2 s)."""


def agent_root_name(cluster_id: str, host: str) -> str:
    """The agent's root under the host's work_dir: `c-<cluster>/<host>`. The host is in
    the path so that hosts sharing one work_dir (NFS homes) each keep their own
    attempts: no agent lists, acknowledges or fences another host's."""
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in host)
    return f"c-{cluster_id}/{safe}"


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
        namespace=agent_root_name(namespace, spec.name),
        run_as=spec.run_as,
    )


class ControllerError(RuntimeError):
    """The controller cannot start; the message says why."""


class Controller:
    """One controller. Use `async with Controller.open(settings)` or `run()`."""

    def __init__(
        self,
        settings: ControllerSettings,
        inventory: ResolvedInventory,
        store: Store,
        pool: HostPool | None = None,
        stored: tuple[dict[str, Any], list[Change]] | None = None,
    ) -> None:
        """`pool`: the host pool to use (tests hand in one of fake hosts); by default a
        HostPool of SSH links, filled with the inventory's hosts by `start`. `stored`:
        the inventory file's data and the live changes kept in the store (`create`
        reads them; by default the file alone)."""
        self.settings = settings
        self.inventory = inventory
        self.store = store
        self.bus = EventBus()
        self.cluster = Cluster(inventory)
        self.pool = pool or HostPool(
            LinkSettings(
                connect_timeout_s=settings.connect_timeout_s,
                heartbeat_s=settings.heartbeat_s,
                backoff_max_s=settings.reconnect_max_s,
            )
        )
        self.jobs = JobService(store, self.cluster, self.bus, settings, self._wake)
        self.secrets = self._secret_service()
        self.launcher = Launcher(self.jobs, self.cluster, self.pool, settings, self.secrets)
        self.jobs.use(self.launcher)
        self.execs = ExecService(self.jobs, self.pool)
        steps = StepService(self.jobs, store.steps)
        relay = RelayService(self.jobs, self.pool, steps, self.execs)
        self.hosts = HostService(store, self.cluster, self.bus, self.jobs, relay, self.pool)
        self.monitor = HostMonitor(self.hosts, self.pool, settings)
        self.hosts.on_connect = self._host_connected
        self.definitions = DefinitionService(store)
        self.power = self._power_manager()
        jobs = self.jobs
        self.arrays = ArrayTracker(jobs.array_parents, jobs.summarize_parent, jobs.spawn)
        self.deps = DependencyTracker(self.jobs, self.arrays, store)
        self.submitter = Submitter(self.jobs, self.arrays, self.deps, store, self.secrets)
        self.control = JobControl(
            self.jobs, self.deps, self.submitter.check_request, self.launcher.retime,
            self.arrays, store,
        )  # fmt: skip
        self.scheduler = SchedulerLoop(self.jobs)
        self.scheduler.on_resume = self.power.resume
        # Who follows job changes, in this order: dependencies, array counts, fair share.
        jobs.observe(self.deps.changed)
        jobs.observe(self.arrays.child_changed)
        jobs.observe(self.scheduler.ledger.job_finished)
        self.started_at = time.time()
        self.edits = self._inventory_admin(stored)
        self.read = ReadModel(store.jobs, self.jobs, self.cluster, self.scheduler,
                              HostReads(self.pool), steps=store.steps, logs=store.logs)  # fmt: skip
        self.leader: Leader | None = None  # taken by `start` (take_lead)
        self.on_stale: Callable[[str], None] = lost_the_lead  # a host refused our epoch
        self.api = self._api_server()
        self._observability()
        self._stop = asyncio.Event()

    def _secret_service(self) -> SecretService:
        """Secrets (docs/security.md), sealed with the key in the controller's home."""
        sealer = Sealer(self.settings.home / KEY_FILE)
        return SecretService(self.store.secrets, sealer, Admins.parse(self.inventory.admins))

    def _inventory_admin(
        self, stored: tuple[dict[str, Any], list[Change]] | None
    ) -> InventoryAdmin:
        """Live administration (docs/operations.md): changes over the inventory file."""
        path = self.inventory.path
        if stored is None:
            try:
                stored = (load_document(path), [])
            except InventoryError:
                stored = ({}, [])
        raw, changes = stored
        edits = InventoryAdmin(
            path, raw, changes, self.store.admin, self.cluster, self.jobs, self.hosts,
            self.apply_inventory,
        )  # fmt: skip
        self.jobs.observe(edits.job_changed)
        return edits

    async def apply_inventory(self, new: ResolvedInventory) -> None:
        """Swap in a changed inventory: links for hosts added (elastic ones start
        powered down) or whose connection changed, none for hosts removed (idle by
        then), queues and fair-share half-lives as declared, operators' queue states
        over them, and the settings outside the cluster that may change live. The next
        scheduling pass sees it all."""
        self._use_settings(new)
        for name in [n for n in self.cluster.hosts if n not in new.hosts]:
            await self.pool.remove(name, shutdown_agent=True)
        added, changed = self.cluster.replace(new)
        for name in changed:
            await self.pool.remove(name)
        for name in added + changed:
            host = self.cluster.hosts[name]
            if host.elastic and host.state not in (HostState.UP, HostState.CONNECTING):
                host.state = HostState.POWERED_DOWN
                self.hosts.publish(host)
            else:
                self._connect_host(name)
        await self._operator_queue_states()
        half_lives = (q.share_decay_half_life_s for q in new.queues.values())
        self.scheduler.ledger.watch(tuple(float(h) for h in half_lives if h is not None))
        self.bus.publish({"event": "inventory", "path": str(new.path)})
        self._wake()

    def _use_settings(self, new: ResolvedInventory) -> None:
        """`admins`, `[api]`'s limits, `[notifications]` and webhooks, as the inventory now
        says (`[metrics]` and `[retention]` are read at start only). Checked before
        anything changes: a webhook secret file that cannot be read refuses the change."""
        old = self.inventory
        if (new.notifications, new.webhooks) != (old.notifications, old.webhooks):
            try:
                self.notifier.reconfigure(new.notifications, new.webhooks, new.path.parent)
            except NotifyError as exc:
                raise ApiError("bad_request", f"reload: nothing changed: {exc}") from None
        if (new.admins, new.api) != (old.admins, old.api):
            admins = Admins.parse(new.admins)
            self.api.use_policy(replace(
                self.api.policy, admins=admins,
                max_connections_per_user=new.api.max_connections_per_user,
                idle_timeout_s=new.api.idle_timeout_s,
            ))  # fmt: skip
            self.secrets.use_admins(admins)
        self.inventory = new

    async def _operator_queue_states(self) -> None:
        """Queues an operator enabled or disabled: kept in the store, over the inventory."""
        for name, (state, _reason) in (await self.store.admin.queue_states()).items():
            if name in self.cluster.queue_enabled:
                self.cluster.queue_enabled[name] = state == "ENABLED"

    def _power_manager(self) -> PowerManager:
        """Elastic hosts (docs/elastic.md): powered up and down through the pool."""
        return PowerManager(
            self.cluster,
            connect=self._connect_host,
            disconnect=self._disconnect_host,
            kick=self._kick_host,
            changed=self.hosts.publish,
            wake=self._wake,
            persist=self._persist_power,
        )

    def _api_server(self) -> ApiServer:
        """The socket API over the operation table, with the shared-cluster policy."""
        api = self.inventory.api
        policy = ApiPolicy(
            admins=Admins.parse(self.inventory.admins),
            max_connections_per_user=api.max_connections_per_user,
            idle_timeout_s=api.idle_timeout_s,
            events=self.read.event_for,
        )
        return ApiServer(self.settings.socket, self._operations(), self.bus, policy)

    def _observability(self) -> None:
        """Events, notifications and (when an address is set) metrics: docs/observability.md."""
        self.changes = ChangeFeed()
        self.notifier = self._use_events()
        address = self.settings.metrics or self.inventory.metrics_address
        self.metrics, self.metrics_server = self._use_metrics(address)
        self.retention = self._use_retention()

    def _use_retention(self) -> Retention:
        """Collected logs and retention (docs/operations.md)."""
        spec = self.inventory.retention
        cap = int(spec.log_cap_mb * 1024 * 1024)
        self.logs = LogCollector(self.jobs, self.cluster, self.pool, self.store.logs, cap)
        self.jobs.observe(self.logs.changed)
        retention = Retention(self.store.retention, self.pool, spec)
        self.api.add_operations(retention.table())
        return retention

    def _use_events(self) -> Notifier:
        """State changes as events: `hpcbatch events`, and the notifications they feed."""
        self.jobs.observe(self.changes.job_changed)
        self.hosts.observers.append(self.changes.host_changed)
        self.api.streams["events"] = EventsStream(self.changes, self.store.history).open
        inventory = self.inventory
        try:
            notifier = Notifier(
                self.store, inventory.notifications, inventory.webhooks, inventory.path.parent
            )
        except NotifyError as exc:
            raise ControllerError(str(exc)) from None
        self.changes.listeners.append(notifier.on_event)
        return notifier

    def _use_metrics(self, address: str | None) -> tuple[Metrics | None, MetricsServer | None]:
        """Metrics on when an address is set: built only then (a controller without
        them pays nothing), observing the jobs and the API."""
        if not address:
            return None, None
        try:
            server = MetricsServer(
                Metrics(self.jobs, self.cluster, self.scheduler, self.pool), address
            )
        except MetricsError as exc:
            raise ControllerError(str(exc)) from None
        self.jobs.observe(server.metrics.jobs.changed)
        self.api.observer = server.metrics.api
        return server.metrics, server

    def _operations(self) -> dict[str, Operation[Any]]:
        """The API's table: each operation's handler, given only the services it needs."""
        hooks = ControllerHooks(
            started_at=self.started_at,
            inventory_path=str(self.inventory.path),
            set_queue_state=self.set_queue_state,
            request_stop=self.request_stop,
            store={"engine": self.store.db.engine, "where": self.store.db.where},
            lead=self.lead,
            standbys=self.standbys,
        )
        cancel = partial(cancel_jobs, self.jobs, self.store, self.arrays)
        return {
            **JobHandlers(self.read, self.submitter, self.definitions, cancel).table(),
            **AdminHandlers(self.read, self.hosts, hooks).table(),
            **DefinitionHandlers(self.definitions).table(),
            **InventoryHandlers(self.edits, self.set_queue_state).table(),
            **ExecHandlers(self.execs).table(),
            **SecretHandlers(self.secrets).table(),
            **self.control.table(),
        }

    def _wake(self) -> None:
        self.scheduler.wake()

    async def _host_connected(self, host: HostRuntime) -> None:
        """A host (re)connected and reconciled: its health checks, then the time limits
        of its running jobs updated while it was away."""
        await self.monitor.on_connect(host)
        await self.control.host_up(host.spec.name)

    def _connect_host(self, name: str) -> None:
        """Open a link to a resumed elastic host (it goes UP when it answers)."""
        spec = self.cluster.inventory.hosts[name]
        self.pool.add(ssh_target(spec, self.store.cluster_id), self.hosts).start()

    async def _persist_power(self, name: str, state: str) -> None:
        await self.store.admin.set_power(name, state, time.time())

    def _kick_host(self, name: str) -> None:
        self.pool.kick(name)

    async def _disconnect_host(self, name: str) -> None:
        await self.pool.remove(name, shutdown_agent=True)

    @classmethod
    async def create(cls, settings: ControllerSettings) -> Controller:
        load_inventory(settings.inventory)  # the file must be valid by itself
        sync = settings.sync
        store = await Store.open(
            settings.store_url,
            sync=sync,  # type: ignore[arg-type]
            exclusive=True,
            standby=settings.standby,
        )
        try:
            inventory, raw, changes, _ = await InventoryAdmin.effective(
                settings.inventory, store.admin
            )
        except BaseException:
            await store.close()
            raise
        return cls(settings, inventory, store, stored=(raw, changes))

    async def take_lead(self) -> None:
        """A new epoch for this controller's lead, before it acts: every host request
        carries it, and a host that has seen a newer one refuses it (stale_epoch), on
        which this controller stops: docs/high-availability.md, fencing."""
        self.leader = await self.store.take_lead(socket.gethostname(), os.getpid(), time.time())
        self.pool.fencing.epoch = self.leader.epoch
        self.pool.fencing.on_stale = self.on_stale
        log.info(
            "controller leads the store %s at epoch %d", self.store.db.where, self.leader.epoch
        )

    def lead(self) -> dict[str, Any]:
        """This controller's lead as `status` and `ping` show it."""
        leader = self.leader
        if leader is None:
            return {"host": socket.gethostname(), "pid": os.getpid(), "epoch": 0, "since": None}
        return {"host": leader.host, "pid": leader.pid, "epoch": leader.epoch,
                "since": leader.since}  # fmt: skip

    async def standbys(self) -> list[dict[str, Any]]:
        """The standby controllers that said they wait, lately (store/leader.py)."""
        fresh = time.time() - STANDBY_FRESH_S
        return [
            {"host": s.host, "pid": s.pid, "seen": s.seen}
            for s in await self.store.leader.standbys(fresh)
        ]

    async def start(self) -> None:
        await self.take_lead()
        await self.jobs.load()
        await self.submitter.load()
        self.control.load()
        await self.scheduler.ledger.load(self.store, time.time())
        await self.hosts.load()
        self.changes.preload(self.jobs.live_jobs(), self.cluster.hosts.values())
        if self.metrics is not None:
            self.metrics.jobs.preload(self.jobs.live_jobs())
        await self._operator_queue_states()
        try:
            await self.api.start()
        except OSError as exc:
            raise ControllerError(
                f"cannot open the API socket {self.settings.socket}: {exc.strerror or exc}"
            ) from None
        if self.metrics_server is not None:
            try:
                await self.metrics_server.start()
            except MetricsError as exc:
                await self.api.stop()
                raise ControllerError(str(exc)) from None
        # elastic hosts: kept as they were, powered down or resumed; not connected here
        self.power.start(await self.store.admin.power_states())
        for spec in self.cluster.inventory.hosts.values():
            if self.cluster.hosts[spec.name].state not in POWER_STATES:
                self.pool.add(ssh_target(spec, self.store.cluster_id), self.hosts)
        self.pool.start()
        self.scheduler.start()
        self.edits.start()  # host removals a previous controller left pending
        self.monitor.start()
        self.notifier.start()
        self.retention.start()
        log.info(
            "controller up: %d hosts, %d active jobs, socket %s",
            len(self.pool),
            len(self.jobs.live_jobs()),
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

    def reload_soon(self) -> None:
        """SIGHUP: read the inventory file again (as `hpcbatch reload`), logging what changed."""

        async def reload() -> None:
            try:
                result = await self.edits.reload()
            except ApiError as exc:
                log.error("SIGHUP: %s", exc.message)
                return
            for line in [*result["summary"], *result["skipped"]]:
                log.info("SIGHUP: reloaded %s: %s", self.inventory.path, line)

        self.jobs.spawn(reload(), "reload")

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Clean shutdown in order; jobs keep running on the hosts."""
        await self.api.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        await self.monitor.stop()
        await self.edits.stop()
        await self.notifier.stop()
        await self.retention.stop()
        await self.power.stop()
        await self.scheduler.stop()
        self.control.stop()  # its timers: updated time limits, deadlines
        await self.jobs.drain_tasks()
        await self.pool.close()
        self.bus.close()
        await self.store.close()
        log.info("controller stopped")


async def run_controller(settings: ControllerSettings) -> None:
    """Run until SIGTERM/SIGINT or an admin `shutdown` request."""
    controller = await Controller.create(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, controller.request_stop)
    loop.add_signal_handler(signal.SIGHUP, controller.reload_soon)
    try:
        await controller.start()
        await controller.wait_stopped()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await controller.stop()
