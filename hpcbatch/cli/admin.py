"""`hpcbatch definitions ...`: the catalogue commands.

Definitions are written as TOML (or JSON) files; the file is read here and
friendly units are turned into the model's fields (`memory = "4G"` becomes
`memory_mb`, `timeout = "1:00:00"` becomes `timeout_s`), so an error can name
the file and the field before anything reaches the controller.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcbatch.cli.format import table
from hpcbatch.client import Client, ClientError

ClientFactory = Callable[[argparse.Namespace], Client]


class DefinitionFileError(ValueError):
    """A definition file that cannot be read; the message names the file and field."""


def read_definition_file(path: Path) -> dict[str, Any]:
    """A definition file as the controller's `JobDefinition` fields."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DefinitionFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".json":
            body: Any = json.loads(text)
        else:
            body = tomllib.loads(text)
    except ValueError as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError
        raise DefinitionFileError(f"{path}: not valid {path.suffix[1:] or 'TOML'}: {exc}") from None
    if not isinstance(body, dict):
        raise DefinitionFileError(f"{path}: a definition must be a table of fields")
    from hpcbatch.core.units import parse_memory_mb, parse_time

    if "memory" in body:
        try:
            body["memory_mb"] = parse_memory_mb(str(body.pop("memory")))
        except ValueError as exc:
            raise DefinitionFileError(f"{path}: memory: {exc}") from None
    if "timeout" in body:
        try:
            body["timeout_s"] = parse_time(str(body.pop("timeout")))
        except ValueError as exc:
            raise DefinitionFileError(f"{path}: timeout: {exc}") from None
    return body


def cmd_definitions(args: argparse.Namespace, client_for: ClientFactory) -> int:
    with client_for(args) as client:
        if args.action == "register":
            if not args.target:
                raise DefinitionFileError("definitions register: name a definition file")
            path = Path(args.target)
            body = read_definition_file(path)
            if args.name:
                body["name"] = args.name
            try:
                result = client.call("register", definition=body)
            except ClientError as exc:
                raise DefinitionFileError(f"{path}: {exc.message}") from None
            _emit_json(result) if args.json else print(f"Registered {result['arn']}")
            return 0
        if args.action == "show":
            if not args.target:
                raise DefinitionFileError("definitions show: name NAME or NAME:REVISION")
            row = client.call("definition", ref=args.target)
            _emit_json(row) if args.json else print(_render(row))
            return 0
        if args.action == "deregister":
            if not args.target or ":" not in args.target:
                raise DefinitionFileError("definitions deregister: give NAME:REVISION")
            result = client.call("deregister", ref=args.target)
            print(f"Deregistered {result['name']}:{result['revision']}")
            return 0
        rows = client.call("definitions", name=args.target, all=args.all)
    if args.json:
        _emit_json(rows)
        return 0
    print(
        table(
            ["DEFINITION", "STATUS", "CPUS", "MEMORY", "GPUS", "NODES", "COMMAND"],
            [
                [
                    r["arn"],
                    r["status"],
                    r["definition"].get("cpus", 1),
                    r["definition"].get("memory_mb") or "-",
                    r["definition"].get("gpus", 0),
                    r["definition"].get("nodes", 1),
                    _command(r["definition"]),
                ]
                for r in rows
            ],
        )
    )
    return 0


def add_commands(
    add: Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser],
    client_for: ClientFactory,
) -> None:
    sp = add(
        "definitions",
        lambda a: cmd_definitions(a, client_for),
        "job definitions: list, show, register FILE, deregister NAME:REV",
    )
    sp.add_argument(
        "action", nargs="?", default="list", choices=["list", "show", "register", "deregister"]
    )
    sp.add_argument("target", nargs="?", help="a file (register), NAME[:REV] (show/deregister)")
    sp.add_argument("--name", help="register: the definition's name (overrides the file's)")
    sp.add_argument("-a", "--all", action="store_true", help="list: include INACTIVE revisions")
    sp.add_argument("--json", action="store_true")


def _command(defn: dict[str, Any]) -> str:
    import shlex

    if defn.get("command"):
        text = shlex.join(defn["command"])
    else:
        text = "script: " + (defn.get("script") or "").strip().splitlines()[-1]
    return text if len(text) <= 50 else text[:47] + "..."


def _render(row: dict[str, Any]) -> str:
    from hpcbatch.core.text import printable  # another user's text: no raw escapes

    defn = row["definition"]
    owner = row.get("owner") or row["user"]
    by = row["user"] if row["user"] == owner else f"{row['user']} (owner {owner})"
    lines = [printable(f"Definition {row['arn']} ({row['status']}), by {by}")]
    for key in sorted(defn):
        value = defn[key]
        if key == "script":
            lines.append("script:")
            lines += ["  " + printable(line, tabs=True) for line in str(value).splitlines()]
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    if row.get("redacted"):
        lines.append(f"(environment values are shown to {printable(owner)} and administrators)")
    return "\n".join(lines)


def _emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
