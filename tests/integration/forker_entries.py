"""Entries for the forker's tests (test_forker.py): the forker imports them at its
start, with the standard library only (it runs as `python3 -I -S`)."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


def say(args: dict[str, Any], fds: list[int]) -> None:
    """Write what the child is (pid, parent, two signal dispositions) to the pipe."""
    sigpipe = signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    sigchld = signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
    line = f"{args['word']} {os.getpid()} {os.getppid()} {sigpipe} {sigchld}\n"
    os.write(fds[0], line.encode())


def size(args: dict[str, Any], fds: list[int]) -> None:
    """Write how many modules the forker's child holds, and whether the agent's are among
    them."""
    agent = "hpcbatch.transport.agent.hpcbatch_agent" in sys.modules
    os.write(fds[0], f"{len(sys.modules)} {agent}\n".encode())
