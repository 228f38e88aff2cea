"""How inventory problems are worded: each one line naming the file, entry and field.

`hpcbatch.inventory` loads and resolves the inventory; this module turns
pydantic's validation errors into lines such as
`inventory.toml: hosts[2] (name "gpu1"): field "port": ...` and offers the
`(did you mean "x"?)` hints and value renderings the resolver's own messages
use too.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from hpcbatch.models import ComputeEnvSpec, HostDefaults, HostSpec, Inventory, QueueSpec

SECTIONS: dict[str, type[BaseModel]] = {
    "hosts": HostSpec,
    "compute_environments": ComputeEnvSpec,
    "queues": QueueSpec,
}
"""The inventory's arrays of tables, and the model of each entry."""

_TYPE_ERRORS_SHOWING_INPUT = ("_type", "_parsing", "literal_error")
_DIGITS_RE = re.compile(r"[0-9]+")


def show(value: object) -> str:
    """A short TOML-like rendering of a bad value, for messages."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, list):
        text = "an array"
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _loc_text(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _entry_label(section: str, index: int, raw: Mapping[str, Any]) -> str:
    label = f"{section}[{index}]"
    entries = raw.get(section)
    if isinstance(entries, list) and 0 <= index < len(entries):
        entry = entries[index]
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            label += f" (name {show(entry['name'])})"
    return label


def suggest(word: str, choices: Iterable[str], *, names: bool = False) -> str:
    """A `(did you mean "x"?)` hint, or "".

    For field names any close match helps. For host, environment and queue
    names, which often differ only in a number (`node3`, `node1`), only a very
    close match that is not just another number is suggested.
    """
    cutoff = 0.85 if names else 0.6
    for match in difflib.get_close_matches(word, list(choices), n=3, cutoff=cutoff):
        if names and _DIGITS_RE.sub("#", match) == _DIGITS_RE.sub("#", word):
            continue
        return f' (did you mean "{match}"?)'
    return ""


def _message(
    err: Mapping[str, Any], model: type[BaseModel] | None, rest: Sequence[int | str]
) -> str:
    kind = str(err.get("type", ""))
    msg = str(err.get("msg", "invalid"))
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif kind == "extra_forbidden":
        msg = "unknown field"
        if model is not None and len(rest) == 1 and isinstance(rest[0], str):
            msg += suggest(rest[0], model.model_fields)
    elif kind == "string_pattern_mismatch" and rest and rest[-1] == "name":
        msg = (
            f"{show(err.get('input'))} is not a valid name: use letters, digits, '_', '.', '-'"
            " (starting with a letter or digit, at most 64 characters)"
        )
    elif kind.endswith(_TYPE_ERRORS_SHOWING_INPUT):
        msg += f" (got {show(err.get('input'))})"
    return msg


def validation_problems(path: Path, raw: Mapping[str, Any], exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for err in exc.errors():
        loc: tuple[int | str, ...] = tuple(err["loc"])
        head = loc[0] if loc else ""
        if head in SECTIONS and len(loc) >= 2 and isinstance(loc[1], int):
            where = _entry_label(str(head), loc[1], raw)
            rest = loc[2:]
            model: type[BaseModel] | None = SECTIONS[str(head)]
        elif head == "defaults" and len(loc) >= 2:
            where, rest, model = "defaults", loc[1:], HostDefaults
        else:
            where, rest, model = "", loc, Inventory
        msg = _message(err, model, rest)
        if head in SECTIONS and len(loc) == 1 and err.get("type") == "list_type":
            msg += f"; write [[{head}]] (an array of tables), not [{head}]"
        parts = [str(path)]
        if where:
            parts.append(where)
        if rest:
            parts.append(f'field "{_loc_text(rest)}"')
        parts.append(msg)
        problems.append(": ".join(parts))
    return problems
