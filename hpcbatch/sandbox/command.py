"""The `python -m hpcbatch.sandbox up|down|status` command line.

A quick start without the hpcbatch CLI; `__main__.py` runs `main`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpcbatch.sandbox.api import default_root, sandbox_down, sandbox_status, sandbox_up
from hpcbatch.sandbox.model import Sandbox, SandboxError
from hpcbatch.sandbox.users import parse_users


def _describe(sb: Sandbox) -> str:
    lines = [f"sandbox {sb.root} (login user {sb.user}), {len(sb.hosts)} hosts:"]
    for h in sb.hosts:
        state = f"up (pid {h.pid})" if h.pid is not None else "down"
        gpus = f"  {h.gpus} GPUs" if h.gpus else ""
        lines.append(
            f"  {h.name:<8} {h.address + ':' + str(h.port):<22} {state:<16} {h.fabric}{gpus}"
        )
    lines += [
        f"ssh:       ssh -F {sb.ssh_config} {sb.hosts[0].name}",
        f"inventory: {sb.inventory}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m hpcbatch.sandbox up|down|status [--root DIR] [--hosts N] ...`."""
    parser = argparse.ArgumentParser(
        prog="python -m hpcbatch.sandbox",
        description="A sandbox cluster of real sshd hosts on loopback addresses.",
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument(
        "--root", type=Path, default=None, help=f"sandbox directory (default: {default_root()})"
    )
    parser.add_argument("--hosts", type=int, default=4, help="number of hosts (up)")
    parser.add_argument("--gpu-hosts", type=int, default=1, help="hosts with fake GPUs (up)")
    parser.add_argument("--gpus-per-host", type=int, default=2, help="fake GPUs per GPU host")
    parser.add_argument(
        "--base-address", type=int, default=2, help="node1 listens on 127.0.0.BASE (up)"
    )
    parser.add_argument(
        "--users", default="", help="as root: real local users jobs run as (alice,bob) (up)"
    )
    args = parser.parse_args(argv)
    root: Path = args.root if args.root is not None else default_root()
    try:
        if args.action == "up":
            users = tuple(parse_users(args.users))
            sb = sandbox_up(
                root, args.hosts, args.gpu_hosts, args.gpus_per_host, args.base_address, users
            )
            print(_describe(sb))
        elif args.action == "down":
            sandbox_down(root)
            print(f"sandbox {root}: down")
        else:
            status = sandbox_status(root)
            if status is None:
                print(f"no sandbox at {root}")
                return 1
            print(_describe(status))
            return 0 if all(h.pid is not None for h in status.hosts) else 3
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
