"""`hpcbatch events`: job and host state changes as JSON lines, replayed and followed.

A thin client of the controller's `events` stream (controller/changes.py).
`--since` takes a relative age (`30s`, `10m`, `2h`, `7d`), an ISO date or time
(`2026-12-07`, `2026-12-07T12:00`, UTC unless it names a zone) or seconds
since the epoch. Without `--follow` the command replays and ends; without
`--since` it follows from now on.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from hpcbatch.cli.admin import ClientFactory

AGE_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DEFAULT_SINCE = "1h"  # what `hpcbatch events` alone replays


def parse_since(text: str, now: float | None = None) -> float:
    """A `--since` value as seconds since the epoch; ValueError naming the option."""
    now = time.time() if now is None else now
    text = text.strip()
    age = AGE_RE.match(text)
    if age:
        return now - float(age.group(1)) * UNITS[age.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected an age (30s, 10m, 2h, 7d), an ISO date or time"
            " (2026-12-07T12:00) or seconds since the epoch"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def cmd_events(args: argparse.Namespace, client_for: ClientFactory) -> int:
    since = args.since if args.since is not None else (None if args.follow else DEFAULT_SINCE)
    request: dict[str, object] = {"follow": bool(args.follow)}
    if since is not None:
        request["since"] = max(0.0, parse_since(since))
    for key in ("user", "queue", "job"):
        if getattr(args, key) is not None:
            request[key] = getattr(args, key)
    if args.state:
        request["states"] = [s.strip().upper() for s in args.state.split(",") if s.strip()]
    out = sys.stdout
    with client_for(args) as client:
        for event in client.stream("events", **request):
            out.write(json.dumps(event, separators=(",", ":")) + "\n")
            out.flush()
    return 0


def add_commands(
    add: Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser],
    client_for: ClientFactory,
) -> None:
    sp = add(
        "events",
        lambda a: cmd_events(a, client_for),
        "job and host state changes as JSON lines (replay with --since, follow with -f)",
    )
    sp.add_argument("-u", "--user", help="only this user's jobs")
    sp.add_argument("-p", "--queue", help="only this queue's jobs")
    sp.add_argument("-j", "--job", type=int, help="only this job")
    sp.add_argument("-t", "--state", help="only changes to these states, e.g. FAILED,SUCCEEDED")
    sp.add_argument(
        "--since",
        help=f"replay stored changes from then: 10m, 2h, 7d, an ISO time, epoch seconds"
        f" (default {DEFAULT_SINCE} without --follow; none with it)",
    )
    sp.add_argument("-f", "--follow", action="store_true", help="go on with live changes")
