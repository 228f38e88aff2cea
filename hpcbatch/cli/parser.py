"""The `hpcbatch` argument parser: every subcommand but `submit` and `run`, and their options.

Built from the handlers it is given, so that `cli.main` (which runs the
commands) and `cli.complete` (which only reads the options, for shell
completion) share one parser and neither imports the other. `submit` and
`run` appear only by name: their options are the sbatch table of
`core.directives` and `cli.submit.OWN_OPTIONS`, parsed by `cli.submit`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping

from hpcbatch import __version__
from hpcbatch.cli import events, inventory_cmd, purge_cmd, secret_cmd, status
from hpcbatch.cli.admin import ClientFactory, add_commands
from hpcbatch.cli.control import add_commands as add_control_commands
from hpcbatch.cli.store_cmd import add_commands as add_store_commands
from hpcbatch.cli.store_cmd import store_url

Handler = Callable[[argparse.Namespace], int]


def _no_handler(args: argparse.Namespace) -> int:
    raise RuntimeError(f"no handler for {args.command!r}")


def build_parser(
    handlers: Mapping[str, Handler], client_for: ClientFactory
) -> argparse.ArgumentParser:
    """The parser; `handlers` maps a command's name to the function that runs it."""

    def handler(name: str) -> Handler:
        return handlers.get(name, _no_handler)

    p = argparse.ArgumentParser(
        prog="hpcbatch",
        description="Batch jobs on hosts you reach over SSH: AWS Batch's model, Slurm's scripts.",
    )
    p.add_argument("--socket", help="controller socket (default $HPCBATCH_HOME/controller.sock)")
    p.add_argument("--home", help="controller state directory (default $HPCBATCH_HOME)")
    p.add_argument(
        "--cluster",
        help="a controller on another machine, over SSH: [user@]host[:/remote.sock] or a"
        " name in ~/.config/hpcbatch/clusters.toml (default $HPCBATCH_CLUSTER)",
    )
    p.add_argument("--version", action="version", version=f"hpcbatch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("controller", handler("controller"), "run the controller (foreground, or --detach)")
    sp.add_argument(
        "-i", "--inventory", help="inventory TOML (default $HPCBATCH_HOME/inventory.toml)"
    )
    sp.add_argument("--heartbeat", type=float, default=5.0, help="agent heartbeat interval, s")
    sp.add_argument(
        "--down-after",
        type=float,
        default=120.0,
        help="a host silent this long (s) is DOWN: its jobs fail over (default 120)",
    )
    sp.add_argument(
        "--link-timeout",
        type=float,
        help="a connected host silent this long (s) is cut off (default 4 heartbeats, >= 10)",
    )
    sp.add_argument(
        "--metrics",
        metavar="ADDR",
        help="serve Prometheus metrics on HOST:PORT, e.g. 127.0.0.1:9464"
        " (default: the inventory's [metrics] address; none: off)",
    )
    sp.add_argument(
        "--sync",
        choices=["normal", "full"],
        default="normal",
        help="SQLite synchronous mode (full: durable across power loss)",
    )
    sp.add_argument(
        "--store",
        type=store_url,
        metavar="URL",
        help="sqlite:///PATH (default: hpcbatch.db in the home) or "
        "postgresql://[USER@]HOST[:PORT]/DATABASE (docs/high-availability.md)",
    )
    sp.add_argument(
        "--standby",
        action="store_true",
        help="PostgreSQL store: wait while another controller is active, then take over",
    )
    sp.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sp.add_argument(
        "--detach", action="store_true", help="run in the background; wait until it serves"
    )
    sp.add_argument(
        "--system",
        action="store_true",
        help="the shared controller of a multi-user cluster, as a service: state in "
        "/var/lib/hpcbatch (0700), socket /run/hpcbatch/controller.sock (every user finds "
        "it), inventory /etc/hpcbatch/inventory.toml (docs/security.md)",
    )

    sub.add_parser(
        "submit",
        help="submit a job script (sbatch-like): submit [OPTIONS] SCRIPT [ARGS]",
        add_help=False,
    )
    sub.add_parser(
        "run",
        help="run a command and stream its output (srun-like): run [OPTIONS] CMD...",
        add_help=False,
    )
    sub.add_parser(
        "alloc",
        help="hold nodes and open a shell aimed at them (salloc-like): alloc [OPTIONS] [CMD]",
        add_help=False,
    )

    sp = add("jobs", handler("jobs"), "list jobs (squeue-like)")
    sp.add_argument("-t", "--states", help="comma-separated states, e.g. RUNNING,RUNNABLE")
    sp.add_argument("-u", "--user")
    sp.add_argument("--me", action="store_true", help="only my jobs")
    sp.add_argument("-p", "--queue")
    sp.add_argument("-n", "--name")
    sp.add_argument("-j", "--jobs", help="comma-separated job ids")
    sp.add_argument("--array", type=int, metavar="JOBID", help="the children of this array job")
    sp.add_argument("-a", "--all", action="store_true", help="include finished jobs")
    sp.add_argument("--tag", action="append", metavar="KEY=VALUE", help="only jobs with this tag")
    sp.add_argument(
        "-l", "--long", action="store_true", help="with the priority the scheduler sees (sprio)"
    )
    sp.add_argument("--json", action="store_true")

    sp = add("acct", handler("acct"), "what jobs used: accounting (sacct-like)")
    sp.add_argument(
        "-S", "--starttime", help="from (default: midnight today): 2026-12-01, now-2days"
    )
    sp.add_argument("-E", "--endtime", help="until (default: now)")
    sp.add_argument("-u", "--user", help="this user's jobs (default: yours)")
    sp.add_argument("-a", "--allusers", action="store_true", help="every user's jobs")
    sp.add_argument("-q", "--queue")
    sp.add_argument("-s", "--state", dest="states", help="comma-separated states")
    sp.add_argument("-n", "--name")
    sp.add_argument("-j", "--jobs", help="comma-separated job ids")
    sp.add_argument("-o", "--format", help="columns, e.g. JobID,Elapsed,TotalCPU,MaxRSS,CPUEff")
    sp.add_argument("--nodes", action="store_true", help="a row per node too (JOBID.nodeN)")
    sp.add_argument("--tag", action="append", metavar="KEY=VALUE", help="only jobs with this tag")
    sp.add_argument("-p", "--parsable", action="store_true", help="'|'-separated, no padding")
    sp.add_argument("--json", action="store_true")

    sp = add("eff", handler("eff"), "a job's CPU and memory efficiency (seff-like)")
    sp.add_argument("job", type=int)

    sp = add("show", handler("show"), "show one job: request, state history, attempts")
    sp.add_argument("job", type=int)
    sp.add_argument("--json", action="store_true")

    sp = add("cancel", handler("cancel"), "cancel or terminate jobs (scancel-like)")
    sp.add_argument("jobs", nargs="*", help="job ids; ARRAY_INDEX for one child; an array's id")
    sp.add_argument("-u", "--user")
    sp.add_argument("--me", action="store_true", help="only my jobs")
    sp.add_argument("-p", "--queue")
    sp.add_argument("-n", "--name")
    sp.add_argument("-t", "--states", help="comma-separated states, e.g. RUNNABLE,PENDING")
    sp.add_argument("--reason")
    sp.add_argument("--json", action="store_true")

    sp = add("logs", handler("logs"), "print a job's output")
    sp.add_argument("job", type=int)
    sp.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    sp.add_argument("--stderr", action="store_true", help="the error stream instead of output")
    sp.add_argument("--node", type=int, default=0)
    sp.add_argument("--attempt", type=int)

    sp = add("attach", handler("attach"), "stream a running job's output, every node (sattach)")
    sp.add_argument("job", type=int)
    sp.add_argument("-l", "--label", action="store_true", help="prefix lines with the node")

    sp = add("exec", handler("exec"), "run a command inside a running job of yours")
    sp.add_argument("job", type=int)
    sp.add_argument("--pty", action="store_true", help="on a pseudo-terminal")
    sp.add_argument("--node", type=int, default=0, help="the node (default: the main node)")
    sp.add_argument("command", nargs=argparse.REMAINDER)

    sp = add(
        "hosts",
        inventory_cmd.hosts_command(handler("hosts"), client_for),
        "list hosts (sinfo-like), drain/resume/down one, add, remove or revert one",
    )
    sp.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=["list", "drain", "resume", "down", "add", "remove", "revert"],
    )
    sp.add_argument("host", nargs="*")
    sp.add_argument("--reason")
    sp.add_argument("--json", action="store_true")
    inventory_cmd.add_host_options(sp)

    sp = add("queues", handler("queues"), "list job queues")
    sp.add_argument("--json", action="store_true")

    sp = add("shares", handler("shares"), "fair share: each identifier's weight, usage, factor")
    sp.add_argument("-p", "--partition", "--queue", dest="queue", metavar="QUEUE")
    sp.add_argument("--json", action="store_true")

    sp = add("wait", handler("wait"), "wait until jobs are final")
    sp.add_argument("jobs", type=int, nargs="+")
    sp.add_argument("--timeout", type=float)
    sp.add_argument("--json", action="store_true")

    sp = add("ping", handler("ping"), "check that the controller answers")
    sp.add_argument("--json", action="store_true")

    status.add_commands(add, client_for)

    add("stop", handler("stop"), "stop the controller cleanly (jobs keep running on the hosts)")

    add_commands(add, client_for)
    inventory_cmd.add_commands(add, client_for)  # queue, ce, reload
    add_control_commands(add, client_for)  # hold, release, requeue, update
    add_store_commands(add)
    events.add_commands(add, client_for)
    secret_cmd.add_commands(add, client_for)
    purge_cmd.add_commands(add, client_for)

    sp = add("dash", handler("dash"), "the terminal dashboard: hosts, jobs, queues, live logs")
    sp.add_argument("--light", action="store_true", help="light colours (t toggles)")
    sp.add_argument("--view", choices=["cluster", "jobs", "queues"], default="jobs")

    sp = add("sandbox", handler("sandbox"), "a local cluster of real sshd hosts on loopback")
    sp.add_argument("action", choices=["up", "down", "status", "host-up", "host-down"])
    sp.add_argument(
        "names", nargs="*", metavar="NAME", help="hosts to start or stop (host-up, host-down)"
    )
    sp.add_argument("--root", help="sandbox directory (default $HPCBATCH_HOME/sandbox)")
    sp.add_argument("--hosts", type=int, default=4, help="number of hosts (up; default 4)")
    sp.add_argument("--gpu-hosts", type=int, default=1, help="hosts with fake GPUs (up)")
    sp.add_argument("--gpus-per-host", type=int, default=2, help="fake GPUs per GPU host (up)")
    sp.add_argument(
        "--base-address",
        type=int,
        default=2,
        metavar="K",
        help="node1 listens on 127.0.0.K, node2 on K+1... (up; default 2): sandboxes side by side",
    )
    sp.add_argument(
        "--users",
        metavar="NAMES",
        help="as root: make these local users (alice,bob) and let the hosts run jobs as "
        "their submitter (up; the inventory-users.toml beside the inventory)",
    )

    sp = add(
        "completion",
        handler("completion"),
        "print the shell completion script: source <(hpcbatch completion bash)",
    )
    sp.add_argument("shell", choices=["bash", "zsh"])

    sp = add("demo", handler("demo"), "sandbox + controller + example jobs, end to end")
    sp.add_argument(
        "--stop", action="store_true", help="stop the sandbox and controller at the end"
    )
    sp.add_argument("--hosts", type=int, default=4)
    return p
