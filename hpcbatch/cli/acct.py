"""`hpcbatch acct` (sacct-like) and `hpcbatch eff JOB` (seff-like): what jobs used.

The controller answers `acct` with one row per job (and per node with
`--nodes`), as JSON values; the columns, the table and the efficiency summary
are made here from those rows with core.usage (pure, cheap to import).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from hpcbatch.client import Client
from hpcbatch.core.usage import (
    ACCT_COLUMNS,
    efficiency,
    parse_format,
    parse_when,
    render_cell,
    start_of_day,
)

ClientFor = Callable[[argparse.Namespace], Client]


class AcctError(Exception):
    """Bad `acct` input: printed without a traceback."""


def acct_query(args: argparse.Namespace, now: float) -> dict[str, Any]:
    """The `acct` operation's arguments from the command line."""
    query: dict[str, Any] = {}
    try:
        query["start"] = parse_when(args.starttime, now) if args.starttime else None
        query["end"] = parse_when(args.endtime, now) if args.endtime else None
    except ValueError as exc:
        raise AcctError(f"acct: {exc}") from None
    if query["start"] is None and not args.jobs:
        query["start"] = start_of_day(now)
    if args.states:
        query["states"] = [s.strip().upper() for s in args.states.split(",") if s.strip()]
    if args.jobs:
        try:
            query["ids"] = [int(x) for x in args.jobs.split(",")]
        except ValueError:
            raise AcctError(f"acct: -j {args.jobs!r}: give job ids, comma-separated") from None
    for key in ("user", "queue", "name"):
        if getattr(args, key):
            query[key] = getattr(args, key)
    query["all_users"] = bool(args.allusers)
    query["per_node"] = bool(args.nodes)
    for item in getattr(args, "tag", None) or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise AcctError(f"acct --tag {item!r}: give KEY=VALUE")
        query.setdefault("tags", {})[key] = value
    return query


def acct_table(rows: list[dict[str, Any]], columns: tuple[str, ...], parsable: bool) -> str:
    header = [ACCT_COLUMNS[c] for c in columns]
    cells = [[render_cell(r, c) for c in columns] for r in rows]
    if parsable:
        return "\n".join("|".join(line) for line in [header, *cells])
    widths = [max(len(x) for x in col) for col in zip(header, *cells, strict=True)]
    lines = [header, ["-" * w for w in widths], *cells]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)  # fmt: skip


def cmd_acct(args: argparse.Namespace, client_for: ClientFor) -> int:
    try:
        columns = parse_format(args.format)
        query = acct_query(args, time.time())
    except (AcctError, ValueError) as exc:
        print(f"hpcbatch: {exc}", file=sys.stderr)
        return 2
    with client_for(args) as client:
        rows = client.call("acct", **query)
    if args.json:
        json.dump(rows, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(acct_table(rows, columns, args.parsable))
    return 0


def cmd_eff(args: argparse.Namespace, client_for: ClientFor) -> int:
    with client_for(args) as client:
        rows = client.call("acct", ids=[args.job], per_node=True, all_users=True)
    if not rows:
        print(f"hpcbatch: job {args.job} has not run (or is not found)", file=sys.stderr)
        return 1
    job = rows[0]
    print(f"Job {job['jobid']} ({job['jobname']})  user {job['user']}  state {job['state']}")
    print(f"  {efficiency(job)}")
    for row in rows[1:]:
        if ".node" in row["jobid"]:  # the nodes (steps have no efficiency of their own)
            print(f"  {row['jobid']} on {row['nodelist']}: {efficiency(row)}")
    return 0
