"""`hpcbatch submit`/`run` arguments and a job script, read here, into one JSON request.

The parser itself is pure and lives in `core.submitargv` (the controller runs
it too, for the quick client of `cli.quick`); this module gives it what the
CLI's process holds: the script files and standard input, the environment and
the working directory.
"""

from __future__ import annotations

import os

from hpcbatch.core.directives import DirectiveError
from hpcbatch.core.submitargv import (
    HELP_FLAGS,
    OWN_FLAGS,
    OWN_OPTIONS,
    OWN_VALUED,
    ScriptSource,
    Submission,
    describe_command,
    help_request,
)
from hpcbatch.core.submitargv import build_submission as build_from

TYPE_CHECKING = False  # importing typing would cost `hpcbatch submit` ~4 ms of start-up
if TYPE_CHECKING:
    from typing import IO

__all__ = [
    "HELP_FLAGS",
    "OWN_FLAGS",
    "OWN_OPTIONS",
    "OWN_VALUED",
    "LocalScripts",
    "Submission",
    "build_submission",
    "describe_command",
    "help_request",
]


def read_script_file(path: str) -> str:
    """A job script's text; DirectiveError naming the path when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise DirectiveError(path, None, "no such file") from None
    except IsADirectoryError:
        raise DirectiveError(path, None, "is a directory, not a job script") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DirectiveError(path, None, f"cannot read the script: {exc}") from None


class LocalScripts(ScriptSource):
    """This process's files and standard input (None: the command takes none)."""

    def __init__(self, stdin: IO[str] | None) -> None:
        self._stdin = stdin

    def read(self, path: str) -> str:
        return read_script_file(path)

    def read_stdin(self) -> str | None:
        return None if self._stdin is None else self._stdin.read()

    def stdin_piped(self) -> bool:
        return self._stdin is not None and not self._stdin.isatty()

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)


def build_submission(
    argv: list[str], stdin: IO[str] | None, *, run_mode: bool = False
) -> Submission:
    """Parse `submit`/`run` arguments in this process; raises DirectiveError naming
    the file and line."""
    return build_from(
        argv, LocalScripts(stdin), environ=os.environ, cwd=os.getcwd(), run_mode=run_mode,
        umask=current_umask(),
    )  # fmt: skip


def current_umask() -> int:
    """This process's umask, sent with the job (as sbatch sends SLURM_UMASK): the job's
    processes and new output files get it on the hosts."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask
