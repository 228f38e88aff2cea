"""Shell completion, sourced into a real bash (and zsh where installed) and driven as
the shell drives it (COMP_WORDS, COMP_LINE, COMP_POINT; zsh's words and CURRENT).

No controller here: job ids, hosts and queues (tests/integration/test_completion.py)
must then come back empty, and quickly.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcbatch.cli.submit import OWN_OPTIONS
from hpcbatch.core.option_table import help_rows

REPO_ROOT = Path(__file__).resolve().parents[2]


def shim(directory: Path) -> Path:
    """A `hpcbatch` on PATH that runs this checkout (as the venv's entry point does)."""
    directory.mkdir(exist_ok=True)
    exe = directory / "hpcbatch"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} -m hpcbatch.cli.main "$@"\n')
    exe.chmod(0o755)
    return directory


def bash_complete(bin_dir: Path, line: str, *, home: str = "/nonexistent/hb-home") -> list[str]:
    """COMPREPLY after TAB at the end of `line`, in a bash that sourced the script."""
    program = f"""
set -e
source <(hpcbatch completion bash)
complete -p hpcbatch >/dev/null
line={_quote(line)}
read -r -a COMP_WORDS <<< "$line"
[[ "$line" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="$line"
COMP_POINT=${{#COMP_LINE}}
_hpcbatch
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HPCBATCH_HOME": home, "HOME": "/tmp"},
    )
    assert done.returncode == 0, done.stderr
    return [w for w in done.stdout.splitlines() if w]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shim(tmp_path_factory.mktemp("bin"))


def test_commands(bin_dir: Path) -> None:
    words = bash_complete(bin_dir, "hpcbatch ")
    for command in ("submit", "run", "jobs", "show", "cancel", "hosts", "queues", "completion"):
        assert command in words
    assert "_complete" not in words
    assert bash_complete(bin_dir, "hpcbatch ca") == ["cancel"]


def test_every_submit_option(bin_dir: Path) -> None:
    words = {w.rstrip("=") for w in bash_complete(bin_dir, "hpcbatch submit -")}
    table = {name for _g, names, *_ in help_rows() for name in names}
    own = {name for names, _m, cmds, _h in OWN_OPTIONS if "submit" in cmds for name in names}
    assert table | own | {"-h", "--help", "--usage"} <= words
    run_words = {w.rstrip("=") for w in bash_complete(bin_dir, "hpcbatch run -")}
    assert {"--label", "-l", "--mpi"} <= run_words and "--label" not in words


def test_option_values_after_equals_and_space(bin_dir: Path) -> None:
    # bash splits `--export=` at `=`: the candidates are what follows it
    assert bash_complete(bin_dir, "hpcbatch submit --export=") == ["ALL", "NONE"]
    assert bash_complete(bin_dir, "hpcbatch run --launch-mode ") == ["main", "all"]
    assert bash_complete(bin_dir, "hpcbatch submit --mem-per") == [
        "--mem-per-cpu=",
        "--mem-per-gpu=",
    ]
    # after the script: its own arguments, left to the shell's file names
    assert bash_complete(bin_dir, "hpcbatch submit -c 2 job.sh --") == []


def test_other_commands_options_and_choices(bin_dir: Path) -> None:
    assert "--states" in bash_complete(bin_dir, "hpcbatch jobs -")
    assert bash_complete(bin_dir, "hpcbatch hosts ") == [
        "list",
        "drain",
        "resume",
        "down",
        "add",
        "remove",
        "revert",
    ]
    assert bash_complete(bin_dir, "hpcbatch sandbox d") == ["down"]
    assert bash_complete(bin_dir, "hpcbatch --home /tmp/x queue ") == [
        "list",
        "create",
        "update",
        "delete",
        "enable",
        "disable",
        "revert",
    ]
    assert bash_complete(bin_dir, "hpcbatch completion ") == ["bash", "zsh"]


def test_silent_and_quick_without_a_controller(bin_dir: Path, tmp_path: Path) -> None:
    t0 = time.monotonic()
    assert bash_complete(bin_dir, "hpcbatch show ") == []
    assert bash_complete(bin_dir, "hpcbatch submit -p ") == []
    # a controller that accepts but never answers: the completion gives up in about 1 s
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = tmp_path / "controller.sock"
    sock.bind(str(path))
    sock.listen()
    try:
        t1 = time.monotonic()
        assert bash_complete(bin_dir, f"hpcbatch --socket {path} cancel ") == []
        assert time.monotonic() - t1 < 10
    finally:
        sock.close()
    assert time.monotonic() - t0 < 20


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh(bin_dir: Path) -> None:
    """The zsh function, with compadd and _files standing in for the completion system."""
    program = """
compadd() { [[ $1 == -Q ]] && shift; [[ $1 == -- ]] && shift; print -l -- "$@"; }
_files() { print -- '<files>'; }
source <(hpcbatch completion zsh)
words=(hpcbatch submit --exp) CURRENT=3 _hpcbatch
words=(hpcbatch hosts '') CURRENT=3 _hpcbatch
words=(hpcbatch submit job.sh '') CURRENT=4 _hpcbatch
"""
    done = subprocess.run(
        ["zsh", "-f", "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HPCBATCH_HOME": "/nonexistent/hb-home"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "--export=",
        *("list", "drain", "resume", "down", "add", "remove", "revert"),
        "<files>",
    ]
