"""The quick `hpcbatch submit` (cli.quick, the controller's `submit_argv`) against the full CLI.

Each submission goes both ways against one real controller: through the
launcher `make venv` writes (`python -S`, no `site`) and through
`python -m hpcbatch.cli.main`. The job each makes, its output and its exit
status must be the same; the refusals the quick path leaves to the full CLI
must read the same too.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.cli import quick
from hpcbatch.controller.app import Controller
from tests.integration.conftest import Api

pytestmark = pytest.mark.sshd

SCRIPT = """#!/bin/sh
#SBATCH -J from-script
#SBATCH --cpus-per-task=2
#SBATCH --bogus
echo "$@"
"""


class Both:
    """`hpcbatch` two ways, in one directory, with one environment."""

    def __init__(self, c: Controller, where: Path) -> None:
        self.where = where
        self.env = {**os.environ, "HPCBATCH_SOCKET": str(c.settings.socket)}
        self.launcher = where / "hpcbatch"
        quick.write_launcher(str(self.launcher))

    def _run(self, argv: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, input=stdin, capture_output=True, text=True, env=self.env, cwd=self.where,
            timeout=60, stdin=subprocess.DEVNULL if stdin is None else None,
        )  # fmt: skip

    async def run(self, *args: str, stdin: str | None = None) -> tuple[Any, Any]:
        fast = await asyncio.to_thread(self._run, [str(self.launcher), *args], stdin)
        full = [sys.executable, "-m", "hpcbatch.cli.main", *args]
        return fast, await asyncio.to_thread(self._run, full, stdin)


def _job_id(out: str) -> int:
    """The job id in `Submitted job N ...` or `--parsable`'s `N`."""
    return int(out.split()[2] if out.startswith("Submitted job ") else out)


async def _request(api: Api, out: str) -> dict[str, Any]:
    shown: dict[str, Any] = await api("show", job_id=_job_id(out))
    return dict(shown["request"])


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (["--wrap", "echo hi"], None),
        (["-c", "1", "--export=NONE,FOO=bar", "job.sh", "a b", "c"], None),
        (["--parsable", "-J", "piped"], "#!/bin/sh\n#SBATCH -t 5\ntrue\n"),
        (["--parsable", "-"], "#!/bin/sh\ntrue\n"),
        (["--array=0-3%2", "--retry-attempts", "2", "job.sh"], None),
        (["--export=ALL", "job.sh"], None),
        (["--parsable", "--export=PATH,FOO=x"], "#!/bin/sh\n#SBATCH --export=HOME\ntrue\n"),
    ],
    ids=["wrap", "script-file", "stdin-piped", "stdin-dash", "array", "export-all", "export-names"],
)
async def test_the_quick_path_makes_the_same_job(
    cluster: tuple[Controller, Api], tmp_path: Path, args: list[str], stdin: str | None
) -> None:
    c, api = cluster
    (tmp_path / "job.sh").write_text(SCRIPT)
    both = Both(c, tmp_path)
    fast, full = await both.run("submit", *args, stdin=stdin)
    assert fast.returncode == full.returncode == 0, (fast.stderr, full.stderr)
    assert fast.stderr == full.stderr
    fast_id, full_id = _job_id(fast.stdout), _job_id(full.stdout)
    assert fast.stdout.replace(str(fast_id), "N") == full.stdout.replace(str(full_id), "N")
    assert await _request(api, fast.stdout.strip()) == await _request(api, full.stdout.strip())


async def test_quick_path_is_taken_and_waits(
    cluster: tuple[Controller, Api], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In this process, so that a fall-back to the full CLI would show (Fallback)."""
    c, _api = cluster
    socket = str(c.settings.socket)
    code = await asyncio.to_thread(quick.submit, socket, ["-W", "--wrap", "exit 3"])
    assert code == 1 and capsys.readouterr().out.startswith("Submitted job ")
    code = await asyncio.to_thread(quick.submit, socket, ["--wait", "--parsable", "--wrap", "true"])
    assert code == 0 and capsys.readouterr().out.strip().isdigit()
    for refused in (["--mem=4Q", "--wrap", "true"], ["--begin", "now+1hour", "--wrap", "true"]):
        with pytest.raises(quick.Fallback):
            await asyncio.to_thread(quick.submit, socket, refused)
    with pytest.raises(quick.Fallback):  # no controller there: the full CLI says so
        quick.submit(str(tmp_path / "none.sock"), ["--wrap", "true"])


async def test_the_environment_is_sent_only_when_exported(cluster: tuple[Controller, Api]) -> None:
    _c, api = cluster
    ask = {"cwd": "/", "stdin_piped": False}
    assert await api("submit_argv", argv=["--export=ALL", "--wrap", "true"], **ask) == {
        "need_env": True
    }
    made = await api("submit_argv", argv=["--export=ALL", "--wrap", "true"], env={"A": "1"}, **ask)
    assert (await api("show", job_id=made["job_id"]))["request"]["env"] == {"A": "1"}
    made = await api("submit_argv", argv=["--export=NONE,B=2", "--wrap", "true"], **ask)
    assert (await api("show", job_id=made["job_id"]))["request"]["env"] == {"B": "2"}
    assert await api("submit_argv", argv=["job.sh"], **ask) == {"need_script": "job.sh"}


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (["--mem=4Q", "--wrap", "true"], None),
        (["missing.sh"], None),
        (["--parameters", "a=b", "--wrap", "true"], None),
        (["-p", "no-such-queue", "--wrap", "true"], None),
        ([], "#!/bin/sh\n#SBATCH --mem=4Q\ntrue\n"),
    ],
    ids=["bad-option", "no-file", "usage", "refused-by-controller", "bad-piped-script"],
)
async def test_refusals_read_as_the_full_cli_s(
    cluster: tuple[Controller, Api], tmp_path: Path, args: list[str], stdin: str | None
) -> None:
    c, _api = cluster
    fast, full = await Both(c, tmp_path).run("submit", *args, stdin=stdin)
    assert fast.returncode == full.returncode != 0
    assert fast.stderr == full.stderr and "Traceback" not in fast.stderr
    assert fast.stdout == full.stdout == ""


async def test_what_the_quick_path_leaves_to_the_full_cli(
    cluster: tuple[Controller, Api], tmp_path: Path
) -> None:
    c, api = cluster
    both = Both(c, tmp_path)
    fast, _full = await both.run("submit", "--json", "--wrap", "true")
    assert fast.returncode == 0 and "job_id" in json.loads(fast.stdout)
    fast, _full = await both.run("submit", "--help")
    assert fast.returncode == 0 and fast.stdout == _full.stdout and "--wrap" in fast.stdout
    fast, _full = await both.run("submit", "--parsable", "--begin", "now+1hour", "--wrap", "true")
    assert fast.returncode == 0, fast.stderr
    assert (await _request(api, fast.stdout.strip()))["begin"] is not None
    fast, _full = await both.run("jobs")  # any other command: the full CLI, `site` and all
    assert fast.returncode == 0 and fast.stdout == _full.stdout
