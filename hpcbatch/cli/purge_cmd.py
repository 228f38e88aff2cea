"""`hpcbatch purge --before WHEN`: remove finished jobs now (administrators).

The controller's retention task does this on its own every `[retention]
interval_s` for jobs older than `jobs_days` (docs/operations.md); this command
runs it with a cutoff of the operator's: an age (`30d`: what ended more than
30 days ago), an ISO date or time, or epoch seconds. `--hosts` removes the
attempt directories acknowledged before then from every connected host too.
`--vacuum` gives all the freed space back at once (a full VACUUM: the store
is held meanwhile), where a purge alone does it in small steps.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from hpcbatch.cli.admin import ClientFactory
from hpcbatch.cli.events import parse_since


def cmd_purge(args: argparse.Namespace, client_for: ClientFactory) -> int:
    try:
        before = parse_since(args.before)
    except ValueError as exc:
        raise ValueError(str(exc).replace("--since", "--before", 1)) from None
    with client_for(args) as client:
        done = client.call("purge", before=before, hosts=bool(args.hosts), vacuum=bool(args.vacuum))
    if args.json:
        print(json.dumps(done, indent=2))
        return 0
    print(
        f"removed {done['jobs']} finished jobs, {done['notifications']} delivered"
        f" notifications, {done['attempt_dirs']} attempt directories;"
        f" {done['reclaimed_mb']} MB given back ({done['seconds']:.1f} s)"
    )
    return 0


def add_commands(
    add: Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser],
    client_for: ClientFactory,
) -> None:
    sp = add(
        "purge",
        lambda a: cmd_purge(a, client_for),
        "remove finished jobs (records, history, collected logs) that ended before a time (admin)",
    )
    sp.add_argument(
        "--before",
        required=True,
        metavar="WHEN",
        help="an age (30d: ended more than 30 days ago), an ISO date or time, epoch seconds",
    )
    sp.add_argument(
        "--hosts", action="store_true", help="also the attempt directories on the hosts"
    )
    sp.add_argument(
        "--vacuum",
        action="store_true",
        help="give the freed space back at once (full VACUUM: writes wait meanwhile)",
    )
    sp.add_argument("--json", action="store_true")
