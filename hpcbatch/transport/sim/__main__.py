"""`python -m hpcbatch.transport.sim serve ...`: one process of simulated hosts."""

from __future__ import annotations

import argparse
import asyncio
import sys

from hpcbatch.transport.sim.server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcbatch.transport.sim")
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("serve", help="serve simulated hosts; JSON-line commands on stdin")
    sp.add_argument("--first", type=int, default=0, help="index of the first host (sim<i>)")
    sp.add_argument("--count", type=int, required=True, help="how many hosts")
    sp.add_argument("--prefix", default="sim", help="host name prefix")
    sp.add_argument("--host-key", required=True, help="the hosts' private host key")
    sp.add_argument("--client-key", required=True, help="the one accepted client public key")
    sp.add_argument("--cpus", type=int, default=8)
    sp.add_argument("--memory-mb", type=int, default=32768)
    sp.add_argument("--gpus", type=int, default=0)
    args = parser.parse_args(argv)
    if args.count < 1 or args.first < 0:
        parser.error("--count must be at least 1 and --first at least 0")
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
