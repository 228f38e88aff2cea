"""Live changes over the inventory file: what an operator created, changed or deleted.

Why it exists: the inventory TOML is the cluster's bootstrap description, and
operators change queues, compute environments and hosts while the controller
runs (`hpcbatch queue|ce create|update|delete`, `hpcbatch hosts add|remove`,
docs/operations.md). Each change is an *entry*: the table the TOML file would
hold for it (`{"name": "q", "compute_environments": ["cpu"], ...}`), kept in
the store, or a deletion (None). The effective inventory is always the file
with the stored changes laid over it, entry by entry (a stored entry replaces
the file's entry of that name, or is added after the file's; a deletion
removes it), then validated and resolved exactly as the file is: so a live
change is checked by the same rules, with the same messages.

Pure: no I/O beyond reading the file, no controller.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hpcbatch.core.hostlist import HostlistError, expand
from hpcbatch.inventory import (
    DEFAULT_ENV_NAME,
    DEFAULT_QUEUE_NAME,
    InventoryError,
    ResolvedInventory,
    read_document,
    resolve_document,
)

Kind = Literal["queues", "compute_environments", "hosts"]
KINDS: tuple[Kind, ...] = ("hosts", "compute_environments", "queues")
WORDS: dict[str, str] = {
    "queues": "queue",
    "compute_environments": "compute environment",
    "hosts": "host",
}

Entry = dict[str, Any]
Change = tuple[str, str, Entry | None]
"""(kind, name, entry); entry None: the file's entry of that name is deleted."""


def load_document(path: Path) -> dict[str, Any]:
    """The inventory file as TOML data (not yet validated); InventoryError if unreadable."""
    return read_document(path)


def overlay(raw: Mapping[str, Any], changes: Iterable[Change]) -> dict[str, Any]:
    """The file's data with `changes` laid over it, entry by entry.

    When the file declares no compute environment (or no queue) and a change
    adds one, the made-up `all` environment (`default` queue) is written out
    first, so that adding an environment does not take the others away.
    """
    doc = copy.deepcopy(dict(raw))
    changes = list(changes)
    kinds = {kind for kind, _, _ in changes}
    hosts = doc.get("hosts")
    if "compute_environments" in kinds and not doc.get("compute_environments"):
        names = (
            [h.get("name") for h in hosts if isinstance(h, dict)] if isinstance(hosts, list) else []
        )
        doc["compute_environments"] = [{"name": DEFAULT_ENV_NAME, "hosts": names}]
    if "queues" in kinds and not doc.get("queues"):
        envs = doc.get("compute_environments") or [{"name": DEFAULT_ENV_NAME}]
        names = [e.get("name") for e in envs if isinstance(e, dict)]
        doc["queues"] = [{"name": DEFAULT_QUEUE_NAME, "compute_environments": names}]
    for kind, name, entry in changes:
        entries = doc.get(kind)
        if not isinstance(entries, list):
            entries = []
        at = next(
            (i for i, e in enumerate(entries) if isinstance(e, dict) and e.get("name") == name),
            None,
        )
        if entry is None:
            if at is not None:
                del entries[at]
        elif at is None:
            entries.append(copy.deepcopy(entry))
        else:
            entries[at] = copy.deepcopy(entry)
        doc[kind] = entries
    return doc


def resolve(raw: Mapping[str, Any], changes: Iterable[Change], path: Path) -> ResolvedInventory:
    """The effective inventory: `raw` with `changes` over it, validated and resolved.
    InventoryError (every problem, one per line) when it is not valid."""
    return resolve_document(overlay(raw, changes), path)


def resolve_skipping(
    raw: Mapping[str, Any], changes: list[Change], path: Path
) -> tuple[ResolvedInventory, list[str]]:
    """As `resolve`, but changes that no longer fit the file (after the file was
    edited) are left out one by one, each with a line saying why, rather than
    failing the whole. The file itself must be valid."""
    try:
        return resolve(raw, changes, path), []
    except InventoryError:
        pass
    kept: list[Change] = []
    skipped: list[str] = []
    for change in changes:
        try:
            resolve(raw, [*kept, change], path)
        except InventoryError as exc:
            kind, name, entry = change
            what = "deletion" if entry is None else "entry"
            skipped.append(
                f"the stored {what} of {WORDS.get(kind, kind)} {name} no longer fits the "
                f"inventory file and is not applied: {exc.problems[0]}"
            )
            continue
        kept.append(change)
    return resolve(raw, kept, path), skipped


def entry_of(
    raw: Mapping[str, Any], changes: Iterable[Change], kind: str, name: str
) -> Entry | None:
    """The effective entry of `name` (the stored one, else the file's), or None."""
    for e in overlay(raw, changes).get(kind) or []:
        if isinstance(e, dict) and e.get("name") == name:
            return dict(e)
    return None


def parse_value(text: str) -> Any:
    """A value given on the command line as TOML (`10`, `true`, `["a", "b"]`,
    `{ a = 3 }`, `"x"`); a bare word that is not TOML is taken as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def updated(entry: Mapping[str, Any], fields: Mapping[str, Any], unset: Iterable[str]) -> Entry:
    """`entry` with `fields` set and the `unset` fields removed (back to their default)."""
    out = {k: v for k, v in entry.items() if k not in set(unset)}
    out.update(fields)
    return out


def without_host(
    raw: Mapping[str, Any], changes: list[Change], host: str
) -> tuple[list[Change], list[str]]:
    """The changes that remove `host`: its deletion, and each compute environment that
    names it in `hosts` rewritten without it (hostlist expressions expanded). Also
    the problems that forbid it: an environment left with no host."""
    doc = overlay(raw, changes)
    out: list[Change] = [("hosts", host, None)]
    problems: list[str] = []
    for env in doc.get("compute_environments") or []:
        if not isinstance(env, dict):
            continue
        listed = env.get("hosts") or []
        try:
            names = [n for expr in listed for n in expand(str(expr))]
        except HostlistError:
            continue
        if host not in names:
            continue
        rest = [n for n in dict.fromkeys(names) if n != host]
        if not rest and not env.get("selector"):
            problems.append(
                f"{host} is the only host of compute environment {env.get('name')}: "
                "give it other hosts, or delete it, first"
            )
        out.append(("compute_environments", str(env.get("name")), {**env, "hosts": rest}))
    return out, problems


@dataclass(slots=True)
class Diff:
    """What changed between two effective inventories, for a summary."""

    added: dict[str, list[str]] = field(default_factory=dict)
    removed: dict[str, list[str]] = field(default_factory=dict)
    changed: dict[str, list[str]] = field(default_factory=dict)
    settings: list[str] = field(default_factory=list)  # `admins`, `api`, ... that changed

    def lines(self) -> list[str]:
        out: list[str] = []
        live = [n for n in self.settings if n not in AT_START]
        if live:
            out.append(f"settings changed: {', '.join(live)}")
        later = [n for n in self.settings if n in AT_START]
        if later:
            out.append(f"settings changed, read at start only (restart the controller): "
                       f"{', '.join(later)}")  # fmt: skip
        for kind in KINDS:
            word = WORDS[kind]
            for verb, names in (
                ("added", self.added.get(kind)),
                ("removed", self.removed.get(kind)),
                ("changed", self.changed.get(kind)),
            ):
                if names:
                    plural = "s" if len(names) > 1 else ""
                    out.append(f"{word}{plural} {verb}: {', '.join(names)}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed,
                "settings": self.settings}  # fmt: skip


SETTINGS = {
    "admins": "admins",
    "api": "[api]",
    "notifications": "[notifications]",
    "webhooks": "webhooks",
    "metrics_address": "[metrics]",
    "retention": "[retention]",
}
"""The inventory's settings outside queues, compute environments and hosts: the
resolved inventory's field, and its name in the file."""
AT_START = frozenset({"[metrics]", "[retention]"})
"""Those the controller reads at start only (a reload reports them, a restart applies them)."""


def diff(old: ResolvedInventory, new: ResolvedInventory) -> Diff:
    out = Diff()
    out.settings = [name for attr, name in SETTINGS.items()
                    if getattr(old, attr) != getattr(new, attr)]  # fmt: skip
    for kind in KINDS:
        before: Mapping[str, Any] = getattr(old, kind)
        after: Mapping[str, Any] = getattr(new, kind)
        added = [n for n in after if n not in before]
        removed = [n for n in before if n not in after]
        changed = [n for n in after if n in before and after[n] != before[n]]
        if added:
            out.added[kind] = added
        if removed:
            out.removed[kind] = removed
        if changed:
            out.changed[kind] = changed
    return out
