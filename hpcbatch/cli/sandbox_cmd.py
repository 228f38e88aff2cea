"""`hpcbatch sandbox up|down|status`: the local cluster of real sshd hosts."""

from __future__ import annotations

import argparse
from pathlib import Path

from hpcbatch.sandbox import (
    Sandbox,
    SandboxError,
    default_root,
    sandbox_down,
    sandbox_status,
    sandbox_up,
)


def sandbox_root(args: argparse.Namespace) -> Path:
    if getattr(args, "root", None):
        return Path(args.root).expanduser().resolve()
    if getattr(args, "home", None):
        return Path(args.home).expanduser().resolve() / "sandbox"
    return default_root()


def describe(sb: Sandbox) -> str:
    lines = [f"sandbox at {sb.root} (login user {sb.user})"]
    for h in sb.hosts:
        state = f"sshd pid {h.pid}" if h.pid else "sshd not running"
        gpus = f", {h.gpus} GPUs" if h.gpus else ""
        lines.append(f"  {h.name:8} {h.address}:{h.port:<5} {h.fabric}{gpus}  {state}")
    lines.append(f"inventory:  {sb.inventory}")
    lines.append(f"ssh:        ssh -F {sb.ssh_config} {sb.hosts[0].name}")
    return "\n".join(lines)


def run_sandbox(args: argparse.Namespace) -> int:
    root = sandbox_root(args)
    try:
        if args.action == "up":
            sb = sandbox_up(root, hosts=args.hosts, gpu_hosts=args.gpu_hosts)
            print(describe(sb))
        elif args.action == "down":
            sandbox_down(root)
            print(f"sandbox at {root} stopped")
        else:
            status = sandbox_status(root)
            if status is None:
                print(f"no sandbox at {root}")
                return 1
            print(describe(status))
    except SandboxError as exc:
        print(f"hpcbatch: {exc}")
        return 1
    return 0
