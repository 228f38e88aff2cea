"""`hpcbatch secret set|list|delete`: secrets jobs get by name (docs/security.md).

`set NAME` reads the value from stdin (never from the command line, where
`ps` and shell history would show it); an administrator may instead give
`--file PATH` or `--command CMD`, read on the controller at each launch. Jobs
refer to secrets with `--secret VAR=NAME` (submit, run, #SBATCH/#HPCBATCH
lines, a definition's `secrets`). No command ever prints a value.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TextIO

from hpcbatch.cli.admin import ClientFactory
from hpcbatch.cli.format import table


class SecretInputError(ValueError):
    """The value read from stdin is unusable; the message says why."""


def read_value(src: TextIO | None = None) -> str:
    """The secret's value from stdin: a terminal is read without echo, one line."""
    src = sys.stdin if src is None else src
    if src.isatty():
        import getpass

        value = getpass.getpass("secret value: ")
    else:
        value = src.read().removesuffix("\n")
    if not value:
        raise SecretInputError("secret set: the value read from stdin is empty")
    return str(value)


def cmd_secret(args: argparse.Namespace, client_for: ClientFactory) -> int:
    with client_for(args) as client:
        if args.action == "list":
            rows = client.call("secret_list")
            if args.json:
                print(json.dumps(rows, indent=2))
                return 0
            print(
                table(
                    ["NAME", "OWNER", "SOURCE", "ALSO USABLE BY"],
                    [(r["name"], r["owner"], r["source"], ",".join(r["access"]) or "-")
                     for r in rows],
                )
            )  # fmt: skip
            return 0
        if not args.name:
            raise SecretInputError(f"secret {args.action}: name the secret")
        if args.action == "delete":
            client.call("secret_delete", name=args.name)
            print(f"secret {args.name} deleted")
            return 0
        fields: dict[str, object] = {"name": args.name}
        if args.file:
            fields["file"] = args.file
        elif args.command_line:
            fields["command"] = args.command_line
        else:
            fields["value"] = read_value()
        access = [a.strip() for a in (args.allow or "").split(",") if a.strip()]
        result = client.call("secret_set", access=access, **fields)
    verb = "replaced" if result["replaced"] else "stored"
    print(f"secret {result['name']} {verb} (owner {result['owner']}, from {result['source']})")
    return 0


def add_commands(
    add: Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser],
    client_for: ClientFactory,
) -> None:
    sp = add(
        "secret",
        lambda a: cmd_secret(a, client_for),
        "secrets jobs get by name (--secret VAR=NAME): set (value from stdin), list, delete",
    )
    sp.add_argument("action", choices=["set", "list", "delete"])
    sp.add_argument("name", nargs="?")
    sp.add_argument(
        "--allow",
        metavar="USERS",
        help="set: users and @groups (comma-separated) whose jobs may use it besides yours",
    )
    sp.add_argument(
        "--file", help="set (administrators): read the value from this file on the controller"
    )
    sp.add_argument(
        "--command",
        dest="command_line",
        metavar="CMD",
        help="set (administrators): run CMD on the controller at each launch: its output",
    )
    sp.add_argument("--json", action="store_true", help="list: as JSON")
