"""`hpcbatch status`: which controller leads, who stands by, the store, hosts, queue.

Why it exists apart from `ping`: `ping` answers "is a controller there", from
the controller's memory; `status` is what an operator asks after a take-over
or before a maintenance: the active controller (host, pid, its epoch, since
when), the standbys that said lately that they wait, the store (engine and
location, never a password), hosts up and down, and the queue's depth. One
request (`status`), one screen, or JSON with --json. docs/high-availability.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from hpcbatch.cli.admin import ClientFactory


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "?"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
    return f"{stamp} ({_ago(now - ts)} ago)"


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def render(info: dict[str, Any], now: float) -> str:
    """The `status` reply as lines for people."""
    lead = info["controller"]
    lines = [
        f"active controller on {lead['host']} pid {lead['pid']}, epoch {lead['epoch']},"
        f" since {_when(lead['since'], now)}, hpcbatch {lead['version']}"
    ]
    for s in info["standbys"]:
        lines.append(f"standby on {s['host']} pid {s['pid']} (seen {_ago(now - s['seen'])} ago)")
    if not info["standbys"]:
        lines.append("standbys: none seen")
    store = info["store"]
    lines.append(f"store: {store['engine']} {store['where']}")
    hosts = info["hosts"]
    states = ", ".join(f"{n} {s}" for s, n in sorted(hosts["by_state"].items()))
    lines.append(f"hosts: {hosts['up']} up, {hosts['down']} not up, of {hosts['total']}"
                 + (f" ({states})" if states else ""))  # fmt: skip
    queue = info["queue"]
    lines.append(f"queue: {queue['depth']} waiting, {queue['running']} starting or running")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace, client_for: ClientFactory) -> int:
    with client_for(args) as client:
        info = client.call("status")
    if args.json:
        json.dump(info, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(render(info, time.time()))
    return 0


def add_commands(
    add: Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser],
    client_for: ClientFactory,
) -> None:
    sp = add(
        "status",
        lambda a: cmd_status(a, client_for),
        "the active controller (host, pid, epoch, since), standbys, store, hosts, queue depth",
    )
    sp.add_argument("--json", action="store_true")
