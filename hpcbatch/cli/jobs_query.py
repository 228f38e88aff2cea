"""What `hpcbatch jobs` asks the controller for, from its options.

Apart from `cli.main` so the listing's filters (states, ids, arrays, user,
queue, name, tags) and its long form (`-l`: the priority columns) are read in
one place.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


class JobsOptionError(ValueError):
    """A malformed `jobs` option; the message names it."""


def jobs_query(args: argparse.Namespace) -> dict[str, Any]:
    """The `jobs` operation's arguments for these command-line options."""
    query: dict[str, Any] = {"all": args.all}
    if args.states:
        query["states"] = [s.strip().upper() for s in args.states.split(",") if s.strip()]
    if args.jobs:
        query["ids"] = [int(x) for x in args.jobs.split(",")]
    if args.array is not None:
        query["array_parent"] = args.array
    for key in ("user", "queue", "name"):
        if getattr(args, key):
            query[key] = getattr(args, key)
    if args.me:
        import pwd

        query["user"] = pwd.getpwuid(os.getuid()).pw_name
    if args.tag:
        tags: dict[str, str] = {}
        for item in args.tag:
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise JobsOptionError(f"jobs --tag {item!r}: give KEY=VALUE")
            tags[key] = value
        query["tags"] = tags
    if args.long:
        query["priority"] = True
    return query
