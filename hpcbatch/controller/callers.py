"""Who calls the controller's API, and how a refusal is told to them.

`Caller` is the peer of a request (its uid from the socket's credentials);
`ApiError` is a refusal with a kind the client can act on; validation errors
from pydantic become one line naming each field. Shared by every service the
API reaches (jobs, definitions, cancel, dependencies) and the API server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pydantic import ValidationError


class ApiError(Exception):
    """A refusal to report to the client: `kind` is bad_request, not_found, forbidden,
    infeasible or internal."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class Caller:
    uid: int
    user: str

    @property
    def admin(self) -> bool:
        return self.uid == 0 or self.uid == os.getuid()


def format_validation_error(exc: ValidationError, what: str = "job") -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or what
        parts.append(f"{loc}: {err['msg']}")
    return f"invalid {what}: " + "; ".join(parts)
