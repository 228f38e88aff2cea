"""`hpcbatch hold|release|requeue|update`: job control, as Slurm's `scontrol`.

`update` takes options (`--time 30`, `-p QUEUE`, `-J NAME`, `-d afterok:12`,
`--priority N`, `--nice N`, `--array-throttle N`) or Slurm's `KEY=VALUE` words
(`TimeLimit=30`, `Partition=`, `Name=`, `Dependency=`, `Priority=`, `Nice=`,
`ArrayTaskThrottle=`); values are read
with the same converters as `#SBATCH` lines, so `--time 1:30:00` means what it
means in a script.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from hpcbatch.client import Client

ClientFactory = Callable[[argparse.Namespace], Client]
Add = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]

# Slurm's scontrol words -> (the update field, the option that reads the value)
_WORDS = {
    "timelimit": ("time_limit_s", "--time"),
    "partition": ("queue", "--partition"),
    "name": ("name", "--job-name"),
    "jobname": ("name", "--job-name"),
    "dependency": ("dependency", "--dependency"),
    "priority": ("priority", "--priority"),
    "nice": ("nice", "--nice"),
    "arraytaskthrottle": ("array_throttle", "--array-throttle"),
}


class UpdateError(ValueError):
    """A bad `update` argument; the message names it."""


def _value(option: str, text: str) -> Any:
    """`text` read as `#SBATCH {option}={text}` would be."""
    from hpcbatch.core.directives import parse_args

    if option == "--array-throttle":  # not an sbatch option: `%N` of --array
        if not text.isdigit():
            raise UpdateError(f"update: array throttle {text!r} is not a whole number")
        return int(text)

    parsed = parse_args([f"{option}={text}"], origin="update")
    (value,) = parsed.values.values()
    return value


def changes_of(args: argparse.Namespace) -> dict[str, Any]:
    """The fields `update` sends, from its options and KEY=VALUE words."""
    out: dict[str, Any] = {}
    for field, option, given in (
        ("time_limit_s", "--time", args.time),
        ("queue", "--partition", args.partition),
        ("name", "--job-name", args.job_name),
        ("dependency", "--dependency", args.dependency),
        ("priority", "--priority", args.priority),
        ("nice", "--nice", args.nice),
        ("array_throttle", "--array-throttle", args.array_throttle),
    ):
        if given is not None:
            out[field] = _value(option, given) if given != "" or field != "dependency" else ""
    for word in args.settings:
        key, eq, text = word.partition("=")
        known = _WORDS.get(key.lower().replace("_", ""))
        if not eq or known is None:
            raise UpdateError(
                f"update: {word!r} is not KEY=VALUE with KEY one of TimeLimit, Partition, "
                "Name, Dependency, Priority, Nice, ArrayTaskThrottle"
            )
        field, option = known
        out[field] = "" if field == "dependency" and not text else _value(option, text)
    if not out:
        raise UpdateError("update: name something to change (update --help)")
    return out


def _report(results: list[dict[str, Any]], as_json: bool) -> int:
    if as_json:
        json.dump(results, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    failed = 0
    for r in results:
        if not as_json:
            print(f"job {r.get('display_id') or r['job_id']}: {r['result']}")
        failed += r["result"].startswith("refused")
    return 1 if failed else 0


def cmd_control(op: str, args: argparse.Namespace, client_for: ClientFactory) -> int:
    extra = {"hold": True} if getattr(args, "hold", False) else {}
    with client_for(args) as client:
        results = client.call(op, job_ids=args.jobs, **extra)
    return _report(results, args.json)


def cmd_update(args: argparse.Namespace, client_for: ClientFactory) -> int:
    changes = changes_of(args)
    with client_for(args) as client:
        result = client.call("update", job_id=args.job, changes=changes)
    return _report([result], args.json)


def add_commands(add: Add, client_for: ClientFactory) -> None:
    """The job-control commands, grouped here (cli.parser calls this once)."""
    for op, words in (
        ("hold", "hold waiting jobs (PENDING, reason JobHeldUser) until released"),
        ("release", "release held jobs"),
        ("requeue", "put running or finished jobs back in their queue as a new attempt"),
    ):
        sp = add(op, lambda a, op=op: cmd_control(op, a, client_for), words)  # type: ignore[misc]
        sp.add_argument("jobs", nargs="+", help="job ids; ARRAY_INDEX for one child; an array's id")
        sp.add_argument("--json", action="store_true")
        if op == "requeue":
            sp.add_argument(
                "--hold", action="store_true", help="held when back (scontrol requeuehold)"
            )
    sp = add(
        "update",
        lambda a: cmd_update(a, client_for),
        "change a waiting job (time, queue, name, dependency, priority, nice), an array's "
        "throttle; a running job's time limit (lower it; administrators may raise it)",
    )
    sp.add_argument("job", help="a job id (N or ARRAY_INDEX)")
    sp.add_argument("settings", nargs="*", help="scontrol style: TimeLimit=30 Partition=gpu ...")
    sp.add_argument("-t", "--time", help="time limit (30, 4:30:00, 2-12)")
    sp.add_argument("-p", "--partition", help="queue")
    sp.add_argument("-J", "--job-name", help="name")
    sp.add_argument("-d", "--dependency", help="dependencies (empty: none)")
    sp.add_argument("--priority", help="order within the queue, higher first")
    sp.add_argument("--nice", help="wait behind jobs of the same priority")
    sp.add_argument("--array-throttle", help="an array's %%N: children running at once (0: all)")
    sp.add_argument("--json", action="store_true")
