"""The options every `hpcbatch` command takes before its name: `--socket`, `--home`,
`--cluster`. Read by the entry point (`cli.quick`) and the full CLI (`cli.main`) alike;
the standard library's `os` only, for the quick path's start-up."""

from __future__ import annotations

import os

GLOBALS = ("socket", "home", "cluster")


def split_globals(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Take `--socket X`/`--home X`/`--cluster X` given before the subcommand."""
    found: dict[str, str] = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        for name in GLOBALS:
            if tok == f"--{name}" and i + 1 < len(argv):
                found[name] = argv[i + 1]
                i += 2
                break
            if tok.startswith(f"--{name}="):
                found[name] = tok.split("=", 1)[1]
                i += 1
                break
        else:
            break
    if "home" in found and "socket" not in found:
        found["socket"] = os.path.join(os.path.expanduser(found["home"]), "controller.sock")
    return found, argv[i:]
