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
    start_host,
    stop_host,
)
from hpcbatch.sandbox.users import parse_users


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
    if sb.users:
        lines.append(f"users:      {', '.join(sb.users)} (jobs run as their submitter with")
        lines.append(f"            {sb.users_inventory}: agents log in as root)")
    lines.append(f"ssh:        ssh -F {sb.ssh_config} {sb.hosts[0].name}")
    return "\n".join(lines)


def _power(root: Path, action: str, names: list[str]) -> int:
    """Start or stop sandbox hosts' sshd: what an elastic compute environment's
    `resume_command` and `suspend_command` call on the sandbox (docs/elastic.md)."""
    if not names:
        print(f"hpcbatch: sandbox {action} needs host names")
        return 2
    sb = sandbox_status(root)
    if sb is None:
        print(f"hpcbatch: no sandbox at {root}")
        return 1
    known = {h.name for h in sb.hosts}
    for name in names:
        if name not in known:
            print(f"hpcbatch: sandbox at {root} has no host {name!r} ({', '.join(sorted(known))})")
            return 1
    for name in names:
        if action == "host-up":
            start_host(sb, name)
        else:
            stop_host(sb, name, kill_sessions=True)
        print(f"{name}: {'started' if action == 'host-up' else 'stopped'}")
    return 0


def run_sandbox(args: argparse.Namespace) -> int:
    root = sandbox_root(args)
    try:
        if args.action == "up":
            sb = sandbox_up(
                root,
                hosts=args.hosts,
                gpu_hosts=args.gpu_hosts,
                gpus_per_host=args.gpus_per_host,
                base_address=args.base_address,
                users=tuple(parse_users(args.users or "")),
            )
            print(describe(sb))
        elif args.action == "down":
            sandbox_down(root)
            print(f"sandbox at {root} stopped")
        elif args.action in ("host-up", "host-down"):
            return _power(root, args.action, list(args.names))
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
