"""`hpcbatch store copy SOURCE TARGET`, and the `--store URL` argument type.

An operator moves an installation from the embedded SQLite file to a
PostgreSQL database (or back) with the controller stopped: the copy opens
both stores as a controller would, so it refuses while one runs, and prints
each table's row count on both sides (docs/high-availability.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from hpcbatch.cli.format import table

AddCommand = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def store_url(text: str) -> str:
    """An argparse type: a store URL as the controller reads it (the message names the fault)."""
    from hpcbatch.store.engine import StoreError
    from hpcbatch.store.url import StoreUrl

    try:
        StoreUrl.parse(text)
    except StoreError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_commands(add: AddCommand) -> None:
    sp = add("store", cmd_store, "the controller's store: copy it to another engine")
    sp.add_argument("action", choices=["copy"])
    sp.add_argument("source", type=store_url, help="sqlite:///PATH or postgresql://...")
    sp.add_argument("target", type=store_url, help="a new, empty store: sqlite:///PATH or ...")


def cmd_store(args: argparse.Namespace) -> int:
    import asyncio

    from hpcbatch.store.engine import StoreError
    from hpcbatch.store.transfer import copy_store
    from hpcbatch.store.url import StoreUrl

    source, target = StoreUrl.parse(args.source), StoreUrl.parse(args.target)
    try:
        copied = asyncio.run(copy_store(source, target))
    except StoreError as exc:
        hint = ""
        if "another controller" in str(exc):
            hint = " (stop it first: hpcbatch stop)"
        print(f"hpcbatch: store copy: {exc}{hint}", file=sys.stderr)
        return 1
    print(f"copied {source} -> {target}")
    print(table(["TABLE", "SOURCE", "COPIED"], [(c.table, c.source, c.target) for c in copied]))
    return 0
