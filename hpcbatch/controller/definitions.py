"""Job definitions in the controller: register, list, show, deregister, and expand.

The API operations for definitions live here, and so does the step that turns
a submission naming a definition into an ordinary request (`expand`), so the
job service sees the same request whether it came from a script or a template.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from hpcbatch.controller.callers import ApiError, Caller, format_validation_error
from hpcbatch.jobdefs import (
    DefinitionOverrides,
    JobDefinition,
    parse_definition_ref,
    request_from_definition,
)
from hpcbatch.store.db import Store
from hpcbatch.store.definitions import DefinitionOwned, DefinitionRow


def redacted(row: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """A definition as `caller` sees it: another user's environment values are
    hidden (the names stay, each with null), in its node ranges too."""
    if row["owner"] == caller.user or caller.admin:
        return row
    body = dict(row["definition"])
    if body.get("environment"):
        body["environment"] = dict.fromkeys(body["environment"])
    if body.get("node_ranges"):
        body["node_ranges"] = [
            {**r, "env": dict.fromkeys(r["env"])} if r.get("env") else r
            for r in body["node_ranges"]
        ]
    return {**row, "definition": body, "redacted": True}


class DefinitionService:
    """Registered job definitions, versioned as `name:revision`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def register(self, raw: dict[str, Any] | None, caller: Caller) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise ApiError("bad_request", "definition must be an object")
        try:
            defn = JobDefinition.model_validate(raw)
        except ValidationError as exc:
            raise ApiError("bad_request", format_validation_error(exc, "definition")) from None
        body = defn.model_dump(mode="json", exclude_defaults=True)
        try:
            revision = await self.store.definitions.register(
                defn.name, body, caller.user, time.time(), admin=caller.admin
            )
        except DefinitionOwned as exc:
            raise ApiError(
                "forbidden",
                f"job definition {exc.name} belongs to {exc.owner}; only they or an "
                "administrator may register a new revision of it (choose another name)",
            ) from None
        return {"name": defn.name, "revision": revision, "arn": f"{defn.name}:{revision}"}

    async def show(self, ref: str | None, caller: Caller) -> dict[str, Any]:
        """One revision as the caller may see it (`redacted`)."""
        return redacted((await self.get(ref)).to_json(), caller)

    async def get(self, ref: str | None) -> DefinitionRow:
        if not isinstance(ref, str):
            raise ApiError("bad_request", "definition: give NAME or NAME:REVISION")
        try:
            name, revision = parse_definition_ref(ref)
        except ValueError as exc:
            raise ApiError("bad_request", str(exc)) from None
        row = await self.store.definitions.get(name, revision)
        if row is None:
            if revision is None:
                raise ApiError("not_found", f"no active job definition named {name!r}")
            raise ApiError("not_found", f"job definition {name}:{revision} not found")
        return row

    async def list(self, name: str | None, inactive: bool, caller: Caller) -> list[dict[str, Any]]:
        rows = await self.store.definitions.list(name, inactive=inactive)
        return [redacted(r.to_json(), caller) for r in rows]

    async def deregister(self, ref: str | None, caller: Caller) -> dict[str, Any]:
        row = await self.get(ref)
        if row.status != "ACTIVE":
            raise ApiError("bad_request", f"job definition {row.name}:{row.revision} is INACTIVE")
        if row.owner != caller.user and not caller.admin:
            raise ApiError(
                "forbidden",
                f"job definition {row.name}:{row.revision} belongs to {row.owner}; "
                "only they or an administrator may deregister it",
            )
        await self.store.definitions.deregister(row.name, row.revision)
        return {"name": row.name, "revision": row.revision, "status": "INACTIVE"}

    async def expand(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The plain request for a submission that names a definition.

        Jobs already accepted keep running after their definition is
        deregistered (each stores its whole request); a new submission naming an
        INACTIVE revision is refused, as in AWS Batch.
        """
        try:
            over = DefinitionOverrides.model_validate(raw)
        except ValidationError as exc:
            raise ApiError("bad_request", format_validation_error(exc, "submission")) from None
        row = await self.get(over.definition)
        if row.status != "ACTIVE":
            raise ApiError(
                "bad_request", f"job definition {row.name}:{row.revision} is deregistered"
            )
        defn = JobDefinition.model_validate(row.body | {"name": row.name})
        return request_from_definition(defn, row.revision, over)
