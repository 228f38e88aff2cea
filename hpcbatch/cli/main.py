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

from hpcbatch import __version__
from hpcbatch.cli.globalopts import split_globals
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
    cluster = getattr(args, "cluster", None) or (not home and os.environ.get("HPCBATCH_CLUSTER"))
    if cluster:  # a controller on another machine, its socket forwarded over SSH
        from hpcbatch.cli.remote import forwarded_socket

        return forwarded_socket(cluster)
    return socket_path(os.path.expanduser(home) if home else None)


def _client(args: object, timeout: float | None = 30.0) -> Client:
    return Client(_socket(args), timeout=timeout)


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


# --------------------------------------------------------------------------- controller


def controller_paths(args: argparse.Namespace) -> tuple[Path, str | None, Path]:
    """The controller's state directory, socket (None: the default in the state
    directory) and default inventory: a personal controller's, or with `--system`
    the shared one's (/var/lib/hpcbatch, /run/hpcbatch/controller.sock,
    /etc/hpcbatch/inventory.toml). `--home`/`--socket` given as well still win."""
    from pathlib import Path

    from hpcbatch import locations

    if args.system:
        home = Path(args.home or locations.system_home()).expanduser()
        return home, args.socket or locations.system_socket(), Path(locations.SYSTEM_INVENTORY)
    home = _home(args)
    return home, args.socket, home / "inventory.toml"


def cmd_controller(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    from pathlib import Path

    from hpcbatch.controller.app import run_controller
    from hpcbatch.controller.settings import ControllerSettings

    # Whatever the controller writes (store, log, pid file) is its user's alone.
    os.umask(0o077)
    home, args.socket, default_inventory = controller_paths(args)
    inventory = Path(args.inventory or os.environ.get("HPCBATCH_INVENTORY") or default_inventory)
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
        metrics=args.metrics,
        store=args.store,
        standby=args.standby,
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


def _help(command: str, argv: list[str]) -> bool:
    """Print `submit`/`run`'s help or usage when asked for; True if it was."""
    from hpcbatch.cli.submit import help_request

    wanted = help_request(argv)
    if wanted is None:
        return False
    from hpcbatch.cli.usage import help_text, usage_text

    sys.stdout.write(help_text(command) if wanted == "help" else usage_text(command))
    return True


def cmd_submit(argv: list[str], socket_path: str | None, cluster: str | None = None) -> int:
    from hpcbatch.cli.submit import build_submission

    if _help("submit", argv):
        return 0
    sub = build_submission(argv, sys.stdin)
    for warning in sub.warnings:
        print(f"hpcbatch: warning: {warning}", file=sys.stderr)
    args = SimpleNamespace(socket=socket_path, home=None, cluster=cluster)
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


def cmd_run(argv: list[str], socket_path: str | None, cluster: str | None = None) -> int:
    """srun-like: submit, stream the output live, exit with the job's exit code."""
    from hpcbatch.cli.submit import build_submission

    if _help("run", argv):
        return 0
    sub = build_submission(argv, None, run_mode=True)
    for warning in sub.warnings:
        print(f"hpcbatch: warning: {warning}", file=sys.stderr)
    args = SimpleNamespace(socket=socket_path, home=None, cluster=cluster)
    if sub.pty:
        from hpcbatch.cli.interactive import run_pty

        return run_pty(_socket(args), sub.request, list(sub.request["args"]))
    with _client(args, timeout=None) as client:
        job_id = client.call("submit", request=sub.request)["job_id"]
        from hpcbatch.cli.runjob import feed_stdin, stream_until_final

        if sub.request.get("stdin"):
            feed_stdin(_socket(args), job_id)
        final = stream_until_final(client, _socket(args), job_id)
    if final.get("interrupted"):
        return 130
    if final["state"] != "SUCCEEDED":
        print(f"hpcbatch: job {job_id} {final['state']}: {final.get('reason')}", file=sys.stderr)
        code = final.get("exit_code")
        return int(code) if isinstance(code, int) and code > 0 else 1
    return 0


def cmd_alloc(argv: list[str], socket_path: str | None, cluster: str | None = None) -> int:
    """salloc: hold nodes, open a shell (or run a command) here aimed at them."""
    from hpcbatch.cli.interactive import allocate
    from hpcbatch.cli.submit import build_submission

    if _help("alloc", argv):
        return 0
    with_command = _has_command(argv)
    sub = build_submission(argv if with_command else [*argv, "true"], None, run_mode=True)
    for warning in sub.warnings:
        print(f"hpcbatch: warning: {warning}", file=sys.stderr)
    command = list(sub.request["args"]) if with_command else []
    args = SimpleNamespace(socket=socket_path, home=None, cluster=cluster)
    request = {k: v for k, v in sub.request.items() if k != "stdin"}  # its shell reads it
    return allocate(_socket(args), dict(request, name=request.get("name") or "alloc"), command)


def _has_command(argv: list[str]) -> bool:
    from hpcbatch.cli.submit import OWN_FLAGS, OWN_VALUED
    from hpcbatch.core.directives import split_submit_argv

    return bool(split_submit_argv(argv, flags=OWN_FLAGS, valued=OWN_VALUED)[1])


def cmd_exec(args: argparse.Namespace) -> int:
    """Run a command inside a running job of yours (what alloc's srun/mpirun use)."""
    from hpcbatch.cli.interactive import exec_in_job

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise CliError("exec: name a command to run")
    return exec_in_job(_socket(args), args.job, command, pty=args.pty, node=args.node)


def cmd_attach(args: argparse.Namespace) -> int:
    """sattach: every node's output of a job, live, until it ends."""
    from hpcbatch.cli.runjob import attach

    with _client(args) as client:
        job = client.call("show", job_id=args.job)
    label = args.label or len({a["node"] for a in job.get("attempts") or []}) > 1
    try:
        errors = attach(_socket(args), job, label)
    except KeyboardInterrupt:
        return 130  # detaching leaves the job running, as sattach does
    for error in errors:
        print(f"hpcbatch: attach: {error}", file=sys.stderr)
    return 1 if errors else 0


# --------------------------------------------------------------------------- queries


def cmd_jobs(args: argparse.Namespace) -> int:
    from hpcbatch.cli.format import jobs_table
    from hpcbatch.cli.jobs_query import jobs_query

    with _client(args) as client:
        jobs = client.call("jobs", **jobs_query(args))
    if args.json:
        _print_json(jobs)
    else:
        print(jobs_table(jobs, long=args.long))
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
    from hpcbatch.cli.format import queues_table

    with _client(args) as client:
        queues = client.call("queues")
    if args.json:
        _print_json(queues)
    else:
        print(queues_table(queues))
    return 0


def cmd_shares(args: argparse.Namespace) -> int:
    """sshare-like: the next job in a fair-share queue is the top identifier's."""
    from hpcbatch.cli.format import shares_table

    with _client(args) as client:
        shares = client.call("shares", queue=args.queue)
    if args.json:
        _print_json(shares)
    else:
        print(shares_table(shares))
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
    if args.json:
        _print_json({**info, "client_version": __version__})
        return 0
    print(
        f"controller {info['version']} pid {info['pid']} up {info['uptime_s']:.0f}s, "
        f"inventory {info['inventory']}"
    )
    if "host" in info:
        print(f"{info.get('role', 'active')} controller on {info['host']}")
    if info["version"] != __version__:
        print(
            f"hpcbatch: warning: this client is hpcbatch {__version__}, the controller"
            f" {info['version']}: restart the controller (hpcbatch stop) to run one version",
            file=sys.stderr,
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


def cmd_completion(args: argparse.Namespace) -> int:
    from hpcbatch.cli.complete import script

    sys.stdout.write(script(args.shell))
    return 0


def cmd_acct(args: argparse.Namespace) -> int:
    from hpcbatch.cli.acct import cmd_acct as run

    return run(args, _client)


def cmd_eff(args: argparse.Namespace) -> int:
    from hpcbatch.cli.acct import cmd_eff as run

    return run(args, _client)


def cmd_demo(args: argparse.Namespace) -> int:
    from hpcbatch.demo import run_demo

    return run_demo(keep=not args.stop, hosts=args.hosts)


# --------------------------------------------------------------------------- parser

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "controller": cmd_controller,
    "jobs": cmd_jobs,
    "show": cmd_show,
    "cancel": cmd_cancel,
    "logs": cmd_logs,
    "attach": cmd_attach,
    "exec": cmd_exec,
    "hosts": cmd_hosts,
    "queues": cmd_queues,
    "shares": cmd_shares,
    "wait": cmd_wait,
    "ping": cmd_ping,
    "stop": cmd_stop,
    "dash": cmd_dash,
    "sandbox": cmd_sandbox,
    "completion": cmd_completion,
    "demo": cmd_demo,
    "acct": cmd_acct,
    "eff": cmd_eff,
}


def build_parser() -> argparse.ArgumentParser:
    from hpcbatch.cli.parser import build_parser as build

    return build(HANDLERS, _client)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # submit/run take sbatch/srun options verbatim; parse them ourselves.
        globals_, rest = split_globals(argv)
        if rest and rest[0] == "_complete":  # the shells' completion, on every TAB
            from hpcbatch.cli.complete import main as complete

            return complete(rest[1] if len(rest) > 1 else "")
        if rest and rest[0] in ("submit", "run", "alloc"):
            fn = {"submit": cmd_submit, "run": cmd_run, "alloc": cmd_alloc}[rest[0]]
            return fn(rest[1:], globals_.get("socket"), globals_.get("cluster"))
        args = build_parser().parse_args(argv)
        if not getattr(args, "fn", None):
            build_parser().print_help()
            return EXIT_USAGE
        result: int = args.fn(args)
        return result
    except ClientError as exc:
        from hpcbatch.core.text import printable  # the message may quote another's input

        print(f"hpcbatch: {printable(exc.message)}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
