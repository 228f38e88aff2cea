"""The runnable examples of README.md and docs/ work as written (scripts/docs_check.py).

It brings up its own `hpcbatch demo` (a sandbox of real sshd hosts and a
controller, in a fresh HPCBATCH_HOME) and runs every command of every block
marked `<!-- runnable -->`; a command that stops working fails this test, with
the file, line and output in the message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.sshd, pytest.mark.timeout(600)]

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_runnable_examples_in_the_docs() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "docs_check.py"), "--quiet"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " as documented" in done.stdout
