"""The shapes of the API operations' arguments, checked before any handler runs.

A client may send anything. Each operation's handler reads its arguments
loosely (`args.get(...)`), so a number where a list belongs, or an integer too
large for SQLite, must be refused here with a `bad_request` that names the
argument, not surface later as an internal error or a failed store write.
Unknown arguments are ignored (clients of other versions may send more);
null means absent. Bodies checked by strict models (a job request, a job
definition) are only required to be objects here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpcbatch.controller.callers import ApiError

INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # what SQLite stores
MAX_TEXT = 4096

# kind: int, id (a non-negative int), str, number, object, list[id], list[str],
# list[target] (a job id, or its text as `12` / `12_7`).
SHAPES: dict[str, dict[str, str]] = {
    "submit": {"request": "object", "warnings": "list[str]", "as_user": "str"},
    "jobs": {
        "states": "list[str]",
        "ids": "list[id]",
        "array_parent": "id",
        "user": "str",
        "queue": "str",
        "name": "str",
        "limit": "id",
    },
    "show": {"job_id": "id"},
    "cancel": {
        "job_ids": "list[target]",
        "reason": "str",
        "user": "str",
        "queue": "str",
        "name": "str",
        "states": "list[str]",
    },
    "logs": {
        "job_id": "id",
        "stream": "str",
        "offset": "id",
        "node": "id",
        "attempt": "id",
        "limit": "id",
    },
    "drain": {"host": "str", "reason": "str"},
    "resume": {"host": "str", "reason": "str"},
    "down": {"host": "str", "reason": "str"},
    "wait": {"job_ids": "list[id]", "timeout_s": "number"},
    "register": {"definition": "object"},
    "definitions": {"name": "str"},
    "definition": {"ref": "str"},
    "deregister": {"ref": "str"},
    "queue_update": {"queue": "str", "state": "str", "reason": "str"},
}


def _ok(kind: str, value: Any) -> bool:
    if kind in ("int", "id"):
        low = 0 if kind == "id" else INT_MIN
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= INT_MAX
    if kind == "str":
        return isinstance(value, str) and len(value) <= MAX_TEXT
    if kind == "number":
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and 0 <= value <= 1e9  # NaN fails both comparisons
        )
    if kind == "object":
        return isinstance(value, Mapping)
    if kind == "target":
        return _ok("id", value) or (isinstance(value, str) and len(value) <= 64)
    if kind.startswith("list[") and isinstance(value, list):
        inner = kind[5:-1]
        return len(value) <= 1_000_000 and all(_ok(inner, v) for v in value)
    return False


_WORDS = {
    "id": "a whole number from 0",
    "int": "a whole number",
    "str": f"a string of at most {MAX_TEXT} characters",
    "number": "a number from 0 to 1e9",
    "object": "an object",
    "list[id]": "a list of job ids (whole numbers)",
    "list[str]": "a list of strings",
    "list[target]": "a list of job ids (N or ARRAY_INDEX)",
}


def check_args(op: str, msg: Mapping[str, Any]) -> None:
    """Raise a bad_request ApiError naming the first argument of the wrong shape."""
    for key, kind in SHAPES.get(op, {}).items():
        value = msg.get(key)
        if value is not None and not _ok(kind, value):
            raise ApiError("bad_request", f"{op}: {key} must be {_WORDS[kind]}")
