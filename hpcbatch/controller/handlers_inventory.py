"""The API's live administration: queues, compute environments and hosts created,
changed and deleted, and the inventory file read again (docs/operations.md).

Administrators only. The changes go to `InventoryAdmin` (validated against the
inventory's own rules, kept in the store, applied at once); a queue's state goes
through the controller's queue states, as `hpcbatch queue enable|disable` does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from hpcbatch.controller.apiargs import InventoryArgs, NoArgs, Operation
from hpcbatch.controller.callers import ApiError, Caller
from hpcbatch.controller.inventory_admin import InventoryAdmin
from hpcbatch.inventory_edit import WORDS

SetQueueState = Callable[[str, bool, str | None], Awaitable[None]]


def _admin(caller: Caller, what: str) -> None:
    if not caller.admin:
        raise ApiError("forbidden", f"only an administrator may {what}")


def _kind(args: InventoryArgs) -> str:
    if args.kind is None:
        raise ApiError("bad_request", "kind is required (queues, compute_environments, hosts)")
    return args.kind


def _name(args: InventoryArgs) -> str:
    if not args.name:
        raise ApiError("bad_request", f"name the {WORDS[_kind(args)]}")
    return args.name


class InventoryHandlers:
    def __init__(self, edits: InventoryAdmin, set_queue_state: SetQueueState) -> None:
        self._edits = edits
        self._set_queue_state = set_queue_state

    def table(self) -> dict[str, Operation[Any]]:
        return {
            "inventory_list": Operation(InventoryArgs, self.listing),
            "inventory_create": Operation(InventoryArgs, self.create),
            "inventory_update": Operation(InventoryArgs, self.update),
            "inventory_delete": Operation(InventoryArgs, self.delete),
            "inventory_revert": Operation(InventoryArgs, self.revert),
            "reload": Operation(NoArgs, self.reload),
        }

    async def listing(self, args: InventoryArgs, caller: Caller) -> Any:
        kind = _kind(args)
        if kind == "hosts":  # their SSH settings (key paths, logins): `hosts` shows the rest
            _admin(caller, "list the hosts' inventory entries")
        return self._edits.entries(kind)

    async def create(self, args: InventoryArgs, caller: Caller) -> Any:
        kind = _kind(args)
        _admin(caller, f"create a {WORDS[kind]}")
        entry = dict(args.entry or {})
        if args.name is not None:
            entry["name"] = args.name
        return await self._edits.create(kind, entry, list(args.join or []))

    async def update(self, args: InventoryArgs, caller: Caller) -> Any:
        kind = _kind(args)
        _admin(caller, f"change a {WORDS[kind]}")
        name = _name(args)
        fields = dict(args.fields or {})
        unset = list(args.unset or [])
        out: dict[str, Any] = {"summary": []}
        if kind == "queues" and "state" in fields:
            # A queue's state is the operators' (kept apart, as `queue enable|disable`).
            state = str(fields.pop("state")).upper()
            if state not in ("ENABLED", "DISABLED"):
                raise ApiError("bad_request", "state must be ENABLED or DISABLED")
            self._edits.check_exists(kind, name)
            if fields or unset:
                out = await self._edits.update(kind, name, fields, unset)
            await self._set_queue_state(name, state == "ENABLED", args.reason)
            out["summary"] = [*out["summary"], f"queue {name}: {state}"]
            return out
        if not fields and not unset:
            raise ApiError("bad_request", f"update: nothing to change for {WORDS[kind]} {name}")
        return await self._edits.update(kind, name, fields, unset)

    async def delete(self, args: InventoryArgs, caller: Caller) -> Any:
        kind = _kind(args)
        _admin(caller, f"delete a {WORDS[kind]}")
        return await self._edits.delete(kind, _name(args))

    async def revert(self, args: InventoryArgs, caller: Caller) -> Any:
        kind = _kind(args)
        _admin(caller, f"revert a {WORDS[kind]}")
        return await self._edits.revert(kind, _name(args))

    async def reload(self, args: NoArgs, caller: Caller) -> Any:
        _admin(caller, "reload the inventory")
        return await self._edits.reload()
