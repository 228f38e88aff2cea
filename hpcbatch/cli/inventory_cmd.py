"""`hpcbatch queue|ce create|update|delete|list`, `hpcbatch hosts add|remove` and
`hpcbatch reload`: live administration (docs/operations.md).

Options become the fields of the inventory entry (`--priority 5` is
`priority = 5`); `--set FIELD=VALUE` sets any other field, the value read as
TOML (`--set 'shares={a = 3, b = 1}'`, `--set max_running=10`; a bare word is
a string), and `--unset FIELD` returns one to its default. The controller
checks the result by the inventory's own rules and answers with what changed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Callable
from typing import Any

from hpcbatch.cli.format import table
from hpcbatch.client import Client

ClientFactory = Callable[[argparse.Namespace], Client]
Handler = Callable[[argparse.Namespace], int]
Add = Callable[[str, Handler, str], argparse.ArgumentParser]


class EntryOptionError(ValueError):
    """A malformed option; the message names it."""


def parse_value(text: str) -> Any:
    """A command-line value as TOML; a bare word that is not TOML is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise EntryOptionError(f"{option} {item!r}: give KEY=VALUE")
        out[key] = value
    return out


# option dest -> (entry field, how the value becomes the field's)
Converters = dict[str, tuple[str, Callable[[Any], Any]]]
_QUEUE: Converters = {
    "ce": ("compute_environments", lambda v: [s for s in v.split(",") if s]),
    "priority": ("priority", int),
    "policy": ("policy", str.upper),
    "max_running": ("max_running", int),
    "max_vcpus": ("max_vcpus", int),
}
_CE: Converters = {
    "hosts": ("hosts", lambda v: [v]),
    "max_vcpus": ("max_vcpus", int),
    "strategy": ("allocation_strategy", str.upper),
}
_HOST: Converters = {
    "address": ("address", str),
    "port": ("port", int),
    "user": ("user", str),
    "cpus": ("cpus", int),
    "memory_mb": ("memory_mb", int),
    "gpus": ("gpus", int),
    "weight": ("weight", int),
    "feature": ("features", list),
}


def entry_fields(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """The entry's fields the command line gives (options, --tag, --set)."""
    table_: Converters = {"queues": _QUEUE, "compute_environments": _CE, "hosts": _HOST}[kind]
    out: dict[str, Any] = {}
    for dest, (field, convert) in table_.items():
        value = getattr(args, dest, None)
        if value is not None:
            try:
                out[field] = convert(value)
            except ValueError:
                raise EntryOptionError(f"--{dest.replace('_', '-')} {value!r}: not valid") from None
    if getattr(args, "state", None) is not None:
        out["state"] = args.state.upper()
    if getattr(args, "tag", None):
        out["tags"] = _pairs(args.tag, "--tag")
    if getattr(args, "label", None):
        out["labels"] = _pairs(args.label, "--label")
    if getattr(args, "selector", None):
        out["selector"] = _pairs(args.selector, "--selector")
    if getattr(args, "share", None):
        out["shares"] = {k: parse_value(v) for k, v in _pairs(args.share, "--share").items()}
    for key, value in _pairs(args.set, "--set").items():
        out[key] = parse_value(value)
    return out


def _print(result: Any, as_json: bool) -> None:
    if as_json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return
    for line in result.get("summary") or []:
        print(line)
    for line in result.get("skipped") or []:
        print(f"warning: {line}", file=sys.stderr)


def run_edit(args: argparse.Namespace, client: Client, kind: str, name: str | None) -> int:
    """One change: create, update, delete, revert (and enable/disable for queues, CEs)."""
    action = args.action
    if name is None:
        raise EntryOptionError(f"{action}: name the {kind.rstrip('s').replace('_', ' ')}")
    if action in ("enable", "disable"):
        state = "ENABLED" if action == "enable" else "DISABLED"
        if kind == "queues":
            q = client.call("queue_update", queue=name, state=state, reason=args.reason)
            print(f"queue {q['name']}: {q['state']}")
            return 0
        result = client.call("inventory_update", kind=kind, name=name, fields={"state": state})
    elif action == "create":
        fields = entry_fields(args, kind)
        join = list(getattr(args, "ce_join", None) or [])
        result = client.call("inventory_create", kind=kind, name=name, entry=fields, join=join)
    elif action == "update":
        result = client.call(
            "inventory_update",
            kind=kind,
            name=name,
            fields=entry_fields(args, kind),
            unset=list(args.unset or []),
            reason=args.reason,
        )
    elif action in ("delete", "remove"):
        result = client.call("inventory_delete", kind=kind, name=name)
    else:  # revert
        result = client.call("inventory_revert", kind=kind, name=name)
    _print(result, args.json)
    return 0


def list_entries(client: Client, kind: str, as_json: bool) -> int:
    rows = client.call("inventory_list", kind=kind)
    if as_json:
        json.dump(rows, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    if kind == "compute_environments":
        head = ["NAME", "STATE", "HOSTS", "STRATEGY", "MAX_VCPUS", "TAGS", "SOURCE"]
        body = [
            [
                e["name"],
                e.get("state", "ENABLED"),
                ",".join(e.get("hosts") or []) or _tags(e.get("selector")),
                e.get("allocation_strategy", "BEST_FIT"),
                e.get("max_vcpus", "-"),
                _tags(e.get("tags")),
                r["source"],
            ]
            for r in rows
            for e in [r["entry"]]
        ]
    else:
        head = ["NAME", "STATE", "PRIORITY", "POLICY", "COMPUTE_ENVS", "TAGS", "SOURCE"]
        body = [
            [
                e["name"],
                e.get("state", "ENABLED"),
                e.get("priority", 1),
                e.get("policy", "FIFO"),
                ",".join(e.get("compute_environments") or []),
                _tags(e.get("tags")),
                r["source"],
            ]
            for r in rows
            for e in [r["entry"]]
        ]
    print(table(head, body))
    return 0


def _tags(tags: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in (tags or {}).items()) or "-"


def _common(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a tag (repeatable)")
    sp.add_argument(
        "--set", action="append", metavar="FIELD=VALUE", help="any field, as TOML (repeatable)"
    )
    sp.add_argument("--unset", action="append", metavar="FIELD", help="back to its default")
    sp.add_argument("--state", choices=["ENABLED", "DISABLED", "enabled", "disabled"])
    sp.add_argument("--reason", help="why (a queue's state)")
    sp.add_argument("--json", action="store_true")


ACTIONS = ["list", "create", "update", "delete", "enable", "disable", "revert"]


def add_commands(add: Add, client_for: ClientFactory) -> None:
    def edit(kind: str) -> Handler:
        def run(args: argparse.Namespace) -> int:
            with client_for(args) as client:
                if args.action == "list":
                    return list_entries(client, kind, args.json)
                return run_edit(args, client, kind, args.name)

        return run

    sp = add("queue", edit("queues"), "job queues: list, create, update, delete, enable, disable")
    sp.add_argument("action", choices=ACTIONS)
    sp.add_argument("name", nargs="?")
    sp.add_argument("--ce", metavar="CE1,CE2", help="compute environments, in order")
    sp.add_argument("--priority", metavar="N", help="0-1000, higher first")
    sp.add_argument("--policy", metavar="FIFO|FAIRSHARE")
    sp.add_argument("--max-running", metavar="N")
    sp.add_argument("--max-vcpus", metavar="N")
    sp.add_argument("--share", action="append", metavar="ID=WEIGHT", help="a share's weight")
    _common(sp)

    sp = add("ce", edit("compute_environments"), "compute environments: list, create, update...")
    sp.add_argument("action", choices=ACTIONS)
    sp.add_argument("name", nargs="?")
    sp.add_argument("--hosts", metavar="HOSTLIST", help="e.g. node[1-4],gpu1")
    sp.add_argument("--selector", action="append", metavar="LABEL=VALUE")
    sp.add_argument("--max-vcpus", metavar="N")
    sp.add_argument("--strategy", metavar="BEST_FIT|BEST_FIT_PROGRESSIVE|SPREAD")
    _common(sp)

    def reload(args: argparse.Namespace) -> int:
        with client_for(args) as client:
            _print(client.call("reload"), args.json)
        return 0

    sp = add("reload", reload, "read the inventory file again (as SIGHUP); say what changed")
    sp.add_argument("--json", action="store_true")


def hosts_command(list_hosts: Handler, client_for: ClientFactory) -> Handler:
    """`hpcbatch hosts`: add, remove and revert (drop a live change: the file's entry,
    or none, applies again) here, the rest (list, drain...) as before."""

    def run(args: argparse.Namespace) -> int:
        if args.action not in ("add", "remove", "revert"):
            return list_hosts(args)
        if len(args.host) != 1:
            raise EntryOptionError(f"hosts {args.action}: name one host")
        args.action = {"add": "create", "remove": "delete"}.get(args.action, args.action)
        with client_for(args) as client:
            return run_edit(args, client, "hosts", args.host[0])

    return run


def add_host_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--address", help="add: what SSH connects to (default: the name)")
    sp.add_argument("--port", help="add: SSH port")
    sp.add_argument("--user", help="add: SSH login")
    sp.add_argument("--cpus", help="add: CPUs (default: probed)")
    sp.add_argument("--memory-mb", help="add: memory in MiB (default: probed)")
    sp.add_argument("--gpus", help="add: GPUs (default: probed)")
    sp.add_argument("--weight", help="add: cost, cheaper first")
    sp.add_argument("--label", action="append", metavar="KEY=VALUE")
    sp.add_argument("--feature", action="append", metavar="NAME")
    sp.add_argument(
        "--ce", dest="ce_join", action="append", metavar="CE", help="add: join this environment"
    )
    sp.add_argument("--set", action="append", metavar="FIELD=VALUE")
