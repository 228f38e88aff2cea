"""The help a newcomer meets: `submit`/`run` `--help`, `-h`, `--usage`, `--version`, every
subcommand's `--help`; each checked against the option tables the parsers read."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hpcbatch import __version__
from hpcbatch.cli.main import build_parser
from hpcbatch.cli.submit import OWN_OPTIONS
from hpcbatch.core.option_table import OPTION_GROUPS, help_rows

REPO_ROOT = Path(__file__).resolve().parents[2]


def hpcbatch(*argv: str) -> subprocess.CompletedProcess[str]:
    """The command line as a user runs it, in a fresh interpreter, without a controller."""
    return subprocess.run(
        [sys.executable, "-m", "hpcbatch.cli.main", *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "HPCBATCH_HOME": "/nonexistent/hpcbatch-help-test"},
    )


def sbatch_names() -> list[str]:
    return [name for _group, names, *_ in help_rows() for name in names]


def own_names(command: str) -> list[str]:
    return [n for names, _m, commands, _h in OWN_OPTIONS if command in commands for n in names]


@pytest.mark.parametrize("command", ["submit", "run"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_names_every_option_of_the_table(command: str, flag: str) -> None:
    done = hpcbatch(command, flag)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    text = done.stdout
    assert text.startswith(f"usage: hpcbatch {command} ")
    words = set(text.replace(",", " ").replace("=", " ").replace("[", " ").split())
    for name in [*sbatch_names(), *own_names(command), "--usage"]:
        assert name in words, f"{command} {flag} does not show {name}"
    positions = [text.index(f"\n{group}:\n") for group in OPTION_GROUPS]
    assert positions == sorted(positions), "groups out of the table's order"


def test_run_help_leaves_out_what_run_does_not_take() -> None:
    text = hpcbatch("run", "--help").stdout
    assert "--retry-attempts" in text
    for name in ("--wrap", "--definition", "--parsable"):
        assert name not in text


def test_help_wins_wherever_it_is_among_the_options() -> None:
    done = hpcbatch("submit", "-J", "x", "--mem=4G", "--help")
    assert done.returncode == 0 and "Resources (per host):" in done.stdout
    # after the script it is the script's own argument: no help, and no controller either
    done = hpcbatch("submit", "--wrap", "true", "--help")
    assert done.returncode == 0 and "usage:" in done.stdout
    after = hpcbatch("submit", "job.sh", "--help")
    assert "usage:" not in after.stdout and after.returncode != 0


@pytest.mark.parametrize("command", ["submit", "run"])
def test_usage_is_short_and_complete(command: str) -> None:
    done = hpcbatch(command, "--usage")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"usage: hpcbatch {command} ") and len(lines) <= 18
    assert all(len(line) <= 79 for line in lines)
    for _group, names, _metavar, _arity, help_text in help_rows():
        if not help_text.startswith("ignored:"):
            assert names[0] in done.stdout


def test_version() -> None:
    done = hpcbatch("--version")
    assert done.returncode == 0 and done.stdout == f"hpcbatch {__version__}\n"


def subcommands() -> list[str]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    raise AssertionError("no subcommands")


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_answers_help(command: str) -> None:
    done = hpcbatch(command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: hpcbatch {command}")


def test_sandbox_takes_base_address() -> None:
    args = build_parser().parse_args(["sandbox", "up", "--base-address", "40", "--hosts", "2"])
    assert (args.base_address, args.hosts, args.gpus_per_host) == (40, 2, 2)


def test_every_option_is_in_the_docs() -> None:
    docs = (REPO_ROOT / "docs" / "job-scripts.md").read_text()
    for name in sbatch_names() + own_names("submit"):
        assert f"`{name}`" in docs, f"docs/job-scripts.md does not document {name}"


def _one_ping_server(path: Path, version: str) -> threading.Thread:
    """A stand-in controller that answers one `ping` with `version`."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                request = json.loads(conn.makefile().readline())
                result = {"version": version, "pid": 1, "uptime_s": 5.0, "inventory": "x.toml"}
                reply = {"id": request["id"], "ok": True, "result": result}
                conn.sendall(json.dumps(reply).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("same", [True, False])
def test_ping_shows_the_controller_version_and_a_mismatch(tmp_path: Path, same: bool) -> None:
    version = __version__ if same else "0.0.1"
    sock = tmp_path / "c.sock"
    thread = _one_ping_server(sock, version)
    done = hpcbatch("--socket", str(sock), "ping")
    thread.join(timeout=10)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"controller {version} pid 1")
    if same:
        assert done.stderr == ""
    else:
        assert f"this client is hpcbatch {__version__}, the controller 0.0.1" in done.stderr
