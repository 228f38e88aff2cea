"""The `hpcbatch` command line.

Every subcommand but `controller`, `sandbox` and `demo` is a thin client of
the controller's Unix-socket API. Heavy modules (asyncio, pydantic, asyncssh,
aiosqlite, textual) are imported only inside the commands that need them, so
`hpcbatch submit` starts in tens of milliseconds.
"""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

from hpcbatch.client import Client, ClientError

# argparse, pathlib and typing cost `hpcbatch submit` start-up: imported where
# used, or for the type checker only (a plain TYPE_CHECKING spares importing typing).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from pathlib import Path
    from typing import Any

EXIT_USAGE = 2


class CliError(Exception):
    """A message for the user; printed without a traceback."""


def _home(args: argparse.Namespace) -> Path:
    from pathlib import Path

    from hpcbatch.locations import home_dir

    return Path(args.home or home_dir()).expanduser()


def _socket(args: object) -> str:
    from hpcbatch.locations import socket_path

    sock = getattr(args, "socket", None)
    if sock:
        return os.path.expanduser(str(sock))
    home = getattr(args, "home", None)
    return socket_path(os.path.expanduser(home) if home else None)


def _client(args: object, timeout: float | None = 30.0) -> Client:
    return Client(_socket(args), timeout=timeout)


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


# --------------------------------------------------------------------------- controller


def cmd_controller(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    from pathlib import Path

    from hpcbatch.controller.app import run_controller
    from hpcbatch.controller.settings import ControllerSettings

    home = _home(args)
    inventory = Path(
        args.inventory or os.environ.get("HPCBATCH_INVENTORY") or home / "inventory.toml"
    )
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    settings = ControllerSettings.build(
        inventory=inventory.expanduser(),
        home=home,
        socket=Path(args.socket).expanduser() if args.socket else None,
        heartbeat_s=args.heartbeat,
        down_after_s=args.down_after,
        link_timeout_s=args.link_timeout,
        sync=args.sync.upper(),
    )
    if args.detach:
        from hpcbatch.cli.daemon import detach

        return detach(settings, args.log_level)
    from hpcbatch.controller.app import ControllerError
    from hpcbatch.inventory import InventoryError
    from hpcbatch.store.db import StoreError

    try:
        asyncio.run(run_controller(settings))
    except (InventoryError, StoreError, ControllerError) as exc:
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    return 0


# --------------------------------------------------------------------------- submit / run


def cmd_submit(argv: list[str], socket_path: str | None) -> int:
    from hpcbatch.cli.submit import build_submission

    sub = build_submission(argv, sys.stdin)
    for warning in sub.warnings:
        print(f"hpcbatch: warning: {warning}", file=sys.stderr)
    args = SimpleNamespace(socket=socket_path, home=None)
    with _client(args, timeout=None if sub.wait else 30.0) as client:
        result = client.call("submit", request=sub.request, warnings=sub.warnings)
        job_id = result["job_id"]
        if sub.parsable:
            print(job_id)
        elif not sub.json:
            size = result.get("array_size")
            print(f"Submitted job {job_id}" + (f" (array of {size})" if size else ""))
        if sub.wait:
            (final,) = client.call("wait", job_ids=[job_id])
            if sub.json:
                _print_json(final)
            return 0 if final["state"] == "SUCCEEDED" else 1
        if sub.json:
            _print_json(result)
    return 0


def cmd_run(argv: list[str], socket_path: str | None) -> int:
    """srun-like: submit, stream the output live, exit with the job's exit code."""
    from hpcbatch.cli.submit import build_submission

    sub = build_submission(argv, None, run_mode=True)
    for warning in sub.warnings:
        print(f"hpcbatch: warning: {warning}", file=sys.stderr)
    args = SimpleNamespace(socket=socket_path, home=None)
    with _client(args, timeout=None) as client:
        job_id = client.call("submit", request=sub.request)["job_id"]
        from hpcbatch.cli.logs import follow

        follow(client, job_id, "stdout", sys.stdout)
        (final,) = client.call("wait", job_ids=[job_id])
    if final["state"] != "SUCCEEDED":
        print(f"hpcbatch: job {job_id} {final['state']}: {final.get('reason')}", file=sys.stderr)
        code = final.get("exit_code")
        return int(code) if isinstance(code, int) and code > 0 else 1
    return 0


# --------------------------------------------------------------------------- queries


def cmd_jobs(args: argparse.Namespace) -> int:
    from hpcbatch.cli.format import jobs_table

    query: dict[str, Any] = {"all": args.all}
    if args.states:
        query["states"] = [s.strip().upper() for s in args.states.split(",") if s.strip()]
    if args.jobs:
        query["ids"] = [int(x) for x in args.jobs.split(",")]
    if args.array is not None:
        query["array_parent"] = args.array
    for key in ("user", "queue", "name"):
        if getattr(args, key):
            query[key] = getattr(args, key)
    if args.me:
        import pwd

        query["user"] = pwd.getpwuid(os.getuid()).pw_name
    with _client(args) as client:
        jobs = client.call("jobs", **query)
    if args.json:
        _print_json(jobs)
    else:
        print(jobs_table(jobs))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.call("show", job_id=args.job)
    if args.json:
        _print_json(job)
        return 0
    from hpcbatch.cli.show import render_job

    print(render_job(job))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    query: dict[str, Any] = {"job_ids": args.jobs, "reason": args.reason}
    for key in ("user", "queue", "name"):
        if getattr(args, key):
            query[key] = getattr(args, key)
    if args.me:
        import pwd

        query["user"] = pwd.getpwuid(os.getuid()).pw_name
    if args.states:
        query["states"] = [s.strip().upper() for s in args.states.split(",") if s.strip()]
    if not args.jobs and len(query) == 2:
        raise CliError("cancel: name jobs (N, ARRAY_INDEX) or filters (-u, -p, -n, -t, --me)")
    with _client(args) as client:
        results = client.call("cancel", **query)
    if args.json:
        _print_json(results)
    failed = 0
    for r in results:
        if not args.json:
            print(f"job {r.get('display_id') or r['job_id']}: {r['result']}")
        if r["result"] in ("not found",) or r["result"].startswith(("forbidden", "not a job")):
            failed += 1
    return 1 if failed else 0


def cmd_logs(args: argparse.Namespace) -> int:
    from hpcbatch.cli.logs import follow, read_all

    stream = "stderr" if args.stderr else "stdout"
    with _client(args, timeout=None if args.follow else 30.0) as client:
        if args.follow:
            follow(client, args.job, stream, sys.stdout, node=args.node, attempt=args.attempt)
        else:
            read_all(client, args.job, stream, sys.stdout, node=args.node, attempt=args.attempt)
    return 0


def cmd_hosts(args: argparse.Namespace) -> int:
    from hpcbatch.cli.format import hosts_table

    with _client(args) as client:
        if args.action in ("drain", "resume", "down"):
            if not args.host:
                raise CliError(f"hosts {args.action}: name a host")
            done = {"drain": "drained", "resume": "resumed", "down": "down"}[args.action]
            for name in args.host:
                op_args = {"host": name, "reason": args.reason}
                client.call(args.action, **op_args)
                print(f"{name}: {done}")
            return 0
        hosts = client.call("hosts")
    if args.json:
        _print_json(hosts)
    else:
        print(hosts_table(hosts))
    return 0


def cmd_queues(args: argparse.Namespace) -> int:
    from hpcbatch.cli.format import table

    with _client(args) as client:
        queues = client.call("queues")
    if args.json:
        _print_json(queues)
        return 0
    rows = [
        [
            q["name"] + ("*" if q["default"] else ""),
            q["priority"],
            q["state"],
            ",".join(q["compute_environments"]),
            len(q["hosts"]),
            " ".join(f"{k}={v}" for k, v in sorted(q["counts"].items())) or "-",
        ]
        for q in queues
    ]
    print(table(["QUEUE", "PRIORITY", "STATE", "COMPUTE_ENVS", "HOSTS", "JOBS"], rows))
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    with _client(args, timeout=None) as client:
        jobs = client.call("wait", job_ids=args.jobs, timeout_s=args.timeout)
    if args.json:
        _print_json(jobs)
    else:
        from hpcbatch.cli.format import jobs_table

        print(jobs_table(jobs))
    return 0 if all(j["state"] == "SUCCEEDED" for j in jobs) else 1


def cmd_ping(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.call("ping")
    _print_json(info) if args.json else print(
        f"controller {info['version']} pid {info['pid']} up {info['uptime_s']:.0f}s, "
        f"inventory {info['inventory']}"
    )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.call("shutdown")
    print("controller stopping")
    return 0


def cmd_dash(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpcbatch.dashboard import create_app

    create_app(Path(_socket(args)), light=args.light, initial=args.view).run()
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from hpcbatch.cli.sandbox_cmd import run_sandbox

    return run_sandbox(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from hpcbatch.demo import run_demo

    return run_demo(keep=not args.stop, hosts=args.hosts)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(
        prog="hpcbatch",
        description="Batch jobs on hosts you reach over SSH: AWS Batch's model, Slurm's scripts.",
    )
    p.add_argument("--socket", help="controller socket (default $HPCBATCH_HOME/controller.sock)")
    p.add_argument("--home", help="controller state directory (default $HPCBATCH_HOME)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("controller", cmd_controller, "run the controller (foreground, or --detach)")
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
        "--sync",
        choices=["normal", "full"],
        default="normal",
        help="SQLite synchronous mode (full: durable across power loss)",
    )
    sp.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sp.add_argument(
        "--detach", action="store_true", help="run in the background; wait until it serves"
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

    sp = add("jobs", cmd_jobs, "list jobs (squeue-like)")
    sp.add_argument("-t", "--states", help="comma-separated states, e.g. RUNNING,RUNNABLE")
    sp.add_argument("-u", "--user")
    sp.add_argument("--me", action="store_true", help="only my jobs")
    sp.add_argument("-p", "--queue")
    sp.add_argument("-n", "--name")
    sp.add_argument("-j", "--jobs", help="comma-separated job ids")
    sp.add_argument("--array", type=int, metavar="JOBID", help="the children of this array job")
    sp.add_argument("-a", "--all", action="store_true", help="include finished jobs")
    sp.add_argument("--json", action="store_true")

    sp = add("show", cmd_show, "show one job: request, state history, attempts")
    sp.add_argument("job", type=int)
    sp.add_argument("--json", action="store_true")

    sp = add("cancel", cmd_cancel, "cancel or terminate jobs (scancel-like)")
    sp.add_argument("jobs", nargs="*", help="job ids; ARRAY_INDEX for one child; an array's id")
    sp.add_argument("-u", "--user")
    sp.add_argument("--me", action="store_true", help="only my jobs")
    sp.add_argument("-p", "--queue")
    sp.add_argument("-n", "--name")
    sp.add_argument("-t", "--states", help="comma-separated states, e.g. RUNNABLE,PENDING")
    sp.add_argument("--reason")
    sp.add_argument("--json", action="store_true")

    sp = add("logs", cmd_logs, "print a job's output")
    sp.add_argument("job", type=int)
    sp.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    sp.add_argument("--stderr", action="store_true", help="the error stream instead of output")
    sp.add_argument("--node", type=int, default=0)
    sp.add_argument("--attempt", type=int)

    sp = add("hosts", cmd_hosts, "list hosts (sinfo-like), or drain/resume/down one")
    sp.add_argument(
        "action", nargs="?", default="list", choices=["list", "drain", "resume", "down"]
    )
    sp.add_argument("host", nargs="*")
    sp.add_argument("--reason")
    sp.add_argument("--json", action="store_true")

    sp = add("queues", cmd_queues, "list job queues")
    sp.add_argument("--json", action="store_true")

    sp = add("wait", cmd_wait, "wait until jobs are final")
    sp.add_argument("jobs", type=int, nargs="+")
    sp.add_argument("--timeout", type=float)
    sp.add_argument("--json", action="store_true")

    sp = add("ping", cmd_ping, "check that the controller answers")
    sp.add_argument("--json", action="store_true")

    add("stop", cmd_stop, "stop the controller cleanly (jobs keep running on the hosts)")

    from hpcbatch.cli.admin import add_commands

    add_commands(add, _client)

    sp = add("dash", cmd_dash, "the terminal dashboard: hosts, jobs, queues, live logs")
    sp.add_argument("--light", action="store_true", help="light colours (t toggles)")
    sp.add_argument("--view", choices=["cluster", "jobs", "queues"], default="jobs")

    sp = add("sandbox", cmd_sandbox, "a local cluster of real sshd hosts on loopback")
    sp.add_argument("action", choices=["up", "down", "status"])
    sp.add_argument("--root", help="sandbox directory (default $HPCBATCH_HOME/sandbox)")
    sp.add_argument("--hosts", type=int, default=4)
    sp.add_argument("--gpu-hosts", type=int, default=1)

    sp = add("demo", cmd_demo, "sandbox + controller + example jobs, end to end")
    sp.add_argument(
        "--stop", action="store_true", help="stop the sandbox and controller at the end"
    )
    sp.add_argument("--hosts", type=int, default=4)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # submit/run take sbatch/srun options verbatim; parse them ourselves.
        globals_, rest = _split_globals(argv)
        if rest and rest[0] in ("submit", "run"):
            fn = cmd_submit if rest[0] == "submit" else cmd_run
            return fn(rest[1:], globals_.get("socket"))
        args = build_parser().parse_args(argv)
        if not getattr(args, "fn", None):
            build_parser().print_help()
            return EXIT_USAGE
        result: int = args.fn(args)
        return result
    except ClientError as exc:
        print(f"hpcbatch: {exc.message}", file=sys.stderr)
        return 1
    except CliError as exc:
        print(f"hpcbatch: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # DirectiveError and friends carry file:line already
        print(f"hpcbatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


def _split_globals(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Take `--socket X`/`--home X` given before the subcommand."""
    found: dict[str, str] = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        for name in ("socket", "home"):
            if tok == f"--{name}" and i + 1 < len(argv):
                found[name] = argv[i + 1]
                i += 2
                break
            if tok.startswith(f"--{name}="):
                found[name] = tok.split("=", 1)[1]
                i += 1
                break
        else:
            break
    if "home" in found and "socket" not in found:
        found["socket"] = os.path.join(os.path.expanduser(found["home"]), "controller.sock")
    return found, argv[i:]


if __name__ == "__main__":
    sys.exit(main())
