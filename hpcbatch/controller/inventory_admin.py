"""Live administration: queues, compute environments and hosts changed without a restart.

Why it exists: an operator creates, changes and deletes queues and compute
environments, adds and removes hosts, and has the inventory file read again
(`hpcbatch reload`, SIGHUP) while jobs run (docs/operations.md). Each change
is kept in the store (`inventory_changes`, as the entry the file would hold)
and laid over the file (`hpcbatch.inventory_edit`): the effective inventory is
validated by the file's own rules before anything is written, then handed to
the controller (`apply`), which swaps it in; the next scheduling pass uses it.

Removing a host drains it first: it takes no new work, and it leaves the
inventory when its last job has ended (watched through the job service's
observers; a pending removal is kept in the store, so it survives a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from hpcbatch.controller.callers import ApiError
from hpcbatch.controller.cluster import Cluster
from hpcbatch.core.records import JobRecord
from hpcbatch.core.states import AdminState
from hpcbatch.inventory import InventoryError, ResolvedInventory, load_inventory
from hpcbatch.inventory_edit import (
    WORDS,
    Change,
    Diff,
    Entry,
    diff,
    load_document,
    overlay,
    resolve,
    resolve_skipping,
    updated,
    without_host,
)
from hpcbatch.store.admin import AdminTable

log = logging.getLogger(__name__)

REMOVAL = "removal"  # the kind of a pending host removal's row


class ActiveJobs(Protocol):
    def live_jobs(self) -> list[JobRecord]: ...

    def attempts_on(self, host: str) -> list[Any]: ...


class HostAdmin(Protocol):
    async def set_admin(self, name: str, state: AdminState, reason: str | None) -> Any: ...


class InventoryAdmin:
    """The file, the stored changes over it, and every live change to them."""

    def __init__(
        self,
        path: Path,
        raw: dict[str, Any],
        changes: list[Change],
        admin: AdminTable,
        cluster: Cluster,
        jobs: ActiveJobs,
        hosts: HostAdmin,
        apply: Callable[[ResolvedInventory], Awaitable[None]],
    ) -> None:
        self.path = path
        self._raw = raw
        self._changes: dict[tuple[str, str], Entry | None] = {}
        self._removing: set[str] = set()
        for kind, name, entry in changes:
            if kind == REMOVAL:
                self._removing.add(name)
            else:
                self._changes[(kind, name)] = entry
        self._admin = admin
        self._cluster = cluster
        self._jobs = jobs
        self._hosts = hosts
        self._apply = apply
        self._lock = asyncio.Lock()
        self._ended = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.skipped: list[str] = []

    @classmethod
    async def effective(
        cls, path: Path, admin: AdminTable
    ) -> tuple[ResolvedInventory, dict[str, Any], list[Change], list[str]]:
        """At start-up: the file (which must be valid by itself) with the stored changes
        over it; changes that no longer fit the file are left out, with why."""
        load_inventory(path)
        raw = load_document(path)
        stored = await admin.inventory_changes()
        changes = [c for c in stored if c[0] != REMOVAL]
        inventory, skipped = resolve_skipping(raw, changes, path)
        for line in skipped:
            log.warning("%s", line)
        return inventory, raw, stored, skipped

    # ------------------------------------------------------------------ reads

    def _list(self) -> list[Change]:
        return [(k, n, e) for (k, n), e in self._changes.items()]

    def entries(self, kind: str) -> list[dict[str, Any]]:
        """Each effective entry of `kind`, with where it comes from."""
        doc = overlay(self._raw, self._list())
        file_names = self._file_names(kind)
        out = []
        for e in doc.get(kind) or []:
            name = e.get("name")
            stored = (kind, name) in self._changes
            source = (
                ("store" if name not in file_names else "store over file") if stored else "file"
            )
            out.append({"entry": e, "source": source, "removing": name in self._removing})
        return out

    def _file_names(self, kind: str) -> set[str]:
        return {str(e.get("name")) for e in self._raw.get(kind) or [] if isinstance(e, dict)}

    def _entry(self, kind: str, name: str) -> Entry | None:
        for e in overlay(self._raw, self._list()).get(kind) or []:
            if isinstance(e, dict) and e.get("name") == name:
                return dict(e)
        return None

    def check_exists(self, kind: str, name: str) -> None:
        self._known(kind, name)

    # ------------------------------------------------------------------ changes

    async def create(self, kind: str, entry: Entry, join: list[str]) -> dict[str, Any]:
        """A new entry; a host may also join compute environments (`join`)."""
        name = entry.get("name")
        if not isinstance(name, str):
            raise ApiError("bad_request", f"create: the new {WORDS[kind]} needs a name")
        async with self._lock:
            if self._entry(kind, name) is not None:
                raise ApiError("bad_request", f"{WORDS[kind]} {name} exists already")
            changes: list[Change] = [(kind, name, entry)]
            for env in join:
                current = self._entry("compute_environments", env)
                if current is None:
                    raise ApiError("not_found", f"unknown compute environment {env!r}")
                listed = [*current.get("hosts", []), name]
                changes.append(("compute_environments", env, {**current, "hosts": listed}))
            return await self._commit(changes, [])

    async def update(
        self, kind: str, name: str, fields: dict[str, Any], unset: list[str]
    ) -> dict[str, Any]:
        if "name" in fields or "name" in unset:
            raise ApiError("bad_request", "a name cannot be changed: create and delete instead")
        async with self._lock:
            current = self._known(kind, name)
            return await self._commit([(kind, name, updated(current, fields, unset))], [])

    async def delete(self, kind: str, name: str) -> dict[str, Any]:
        async with self._lock:
            self._known(kind, name)
            if kind == "queues":
                self._refuse_busy_queue(name)
            if kind == "hosts":
                return await self._remove_host(name)
            return await self._commit([self._deletion(kind, name)], [])

    async def revert(self, kind: str, name: str) -> dict[str, Any]:
        """Drop the stored change of `name`: the file's entry (or none) applies again."""
        async with self._lock:
            if (kind, name) not in self._changes:
                raise ApiError("not_found", f"{WORDS[kind]} {name} has no live change to revert")
            if kind == "queues" and name not in self._file_names(kind):
                self._refuse_busy_queue(name)
            return await self._commit([], [(kind, name)])

    async def reload(self) -> dict[str, Any]:
        """Read the inventory file again; the stored changes stay over it."""
        async with self._lock:
            try:
                load_inventory(self.path)
                raw = load_document(self.path)
            except InventoryError as exc:
                raise ApiError("bad_request", f"reload: nothing changed: {exc}") from None
            new, skipped = await asyncio.to_thread(resolve_skipping, raw, self._list(), self.path)
            busy = [n for n in self._cluster.hosts if n not in new.hosts and self._busy(n)]
            if busy:
                names = ", ".join(busy)
                raise ApiError(
                    "bad_request",
                    f"reload: nothing changed: {names} left the file but still run jobs: "
                    f"drain them first (hpcbatch hosts remove {busy[0]}), or keep them",
                )
            out = await self._swap(new)  # raises, changing nothing, on a bad setting
            self._raw, self.skipped = raw, skipped
            return {**out, "skipped": skipped}

    # ------------------------------------------------------------------ hosts

    def _busy(self, host: str) -> bool:
        runtime = self._cluster.hosts.get(host)
        return bool(runtime is not None and runtime.holders) or bool(self._jobs.attempts_on(host))

    async def _remove_host(self, name: str) -> dict[str, Any]:
        changes, problems = without_host(self._raw, self._list(), name)
        if problems:
            raise ApiError("bad_request", f"hosts remove {name}: refused: " + "; ".join(problems))
        self._check(changes)
        if not self._busy(name):
            return await self._commit(changes, [(REMOVAL, name)])
        await self._admin.save_changes([(REMOVAL, name, {})], [], time.time())
        self._removing.add(name)
        await self._hosts.set_admin(name, AdminState.DRAIN, "being removed: draining")
        self._watch()
        return {"removing": [name], "summary": [f"{name} draining: removed when its jobs end"]}

    def job_changed(self, job: JobRecord) -> None:
        """A job observer: a final job may be the last on a host being removed."""
        if self._removing and job.state.is_final:
            self._ended.set()

    def start(self) -> None:
        """Go on with removals a previous controller left pending."""
        self._watch()

    def _watch(self) -> None:
        if self._removing and self._task is None:
            self._task = asyncio.create_task(self._finish_removals(), name="host-removals")
            self._ended.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _finish_removals(self) -> None:
        try:
            while self._removing:
                await self._ended.wait()
                self._ended.clear()
                await asyncio.sleep(0)  # let the exit's release of the host land
                for name in sorted(self._removing):
                    if self._busy(name):
                        continue
                    async with self._lock:
                        await self._finish_removal(name)
        finally:
            self._task = None

    async def _finish_removal(self, name: str) -> None:
        changes, problems = without_host(self._raw, self._list(), name)
        if problems:  # the environments changed meanwhile: keep it drained
            log.warning("cannot remove %s yet: %s", name, "; ".join(problems))
            self._removing.discard(name)
            return
        try:
            await self._commit(changes, [(REMOVAL, name)])
        except ApiError as exc:
            log.warning("cannot remove %s: %s", name, exc.message)
            self._removing.discard(name)

    # ------------------------------------------------------------------ the one commit

    def _known(self, kind: str, name: str) -> Entry:
        current = self._entry(kind, name)
        if current is None:
            raise ApiError("not_found", f"unknown {WORDS[kind]} {name!r}")
        return current

    def _deletion(self, kind: str, name: str) -> Change:
        return (kind, name, None)

    def _refuse_busy_queue(self, name: str) -> None:
        active = [j for j in self._jobs.live_jobs() if j.queue == name]
        if active:
            counts: dict[str, int] = {}
            for j in active:
                counts[str(j.state)] = counts.get(str(j.state), 0) + 1
            states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            raise ApiError(
                "bad_request",
                f"queue {name} still has {len(active)} active jobs ({states}): cancel them "
                "or let them finish, then delete it (disable it meanwhile: no new job "
                "starts; hpcbatch queue disable " + name + ")",
            )

    def _proposed(self, changes: list[Change], forget: list[tuple[str, str]]) -> list[Change]:
        merged = dict(self._changes)
        for key in forget:
            merged.pop(key, None)
        for kind, name, entry in changes:
            if entry is None and name not in self._file_names(kind):
                merged.pop((kind, name), None)  # created live, deleted live: no row
            else:
                merged[(kind, name)] = entry
        return [(k, n, e) for (k, n), e in merged.items()]

    def _check(self, changes: list[Change]) -> ResolvedInventory:
        try:
            return resolve(self._raw, self._proposed(changes, []), self.path)
        except InventoryError as exc:
            raise ApiError(
                "bad_request", f"refused: the inventory would not be valid: {exc}"
            ) from None

    async def _commit(self, changes: list[Change], forget: list[tuple[str, str]]) -> dict[str, Any]:
        proposed = self._proposed(changes, forget)
        try:  # in a thread: at 1,000 hosts it takes tens of ms (benchmarks/live_admin.py)
            new = await asyncio.to_thread(resolve, self._raw, proposed, self.path)
        except InventoryError as exc:
            raise ApiError(
                "bad_request", f"refused: the inventory would not be valid: {exc}"
            ) from None
        busy = [n for n in self._cluster.hosts if n not in new.hosts and self._busy(n)]
        if busy:  # e.g. reverting a host added live while it runs jobs
            raise ApiError(
                "bad_request",
                f"refused: {', '.join(busy)} would leave the inventory while running jobs: "
                f"remove it with hpcbatch hosts remove {busy[0]} (it drains first)",
            )
        keys = {(k, n) for k, n, _ in proposed}
        rows = [(k, n, e) for k, n, e in proposed if self._changes.get((k, n), ...) != e]
        gone = [key for key in self._changes if key not in keys] + [
            key for key in forget if key[0] == REMOVAL
        ]
        await self._admin.save_changes(rows, gone, time.time())
        self._changes = {(k, n): e for k, n, e in proposed}
        for kind, name in forget:
            if kind == REMOVAL:
                self._removing.discard(name)
        for kind, name, entry in changes:
            if kind == "hosts" and entry is None:
                await self._admin.forget_host(name)
            if kind == "queues" and entry is None:
                await self._admin.forget_queue(name)
        return await self._swap(new)

    async def _swap(self, new: ResolvedInventory) -> dict[str, Any]:
        change: Diff = diff(self._cluster.inventory, new)
        await self._apply(new)
        return {**change.as_dict(), "summary": change.lines() or ["nothing changed"]}
