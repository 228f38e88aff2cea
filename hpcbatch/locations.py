"""Where the controller keeps its state and socket, by default.

Standard library and `os.path` only: `hpcbatch submit` resolves the socket on
every call, and importing `pathlib` or the controller's settings would cost its
start-up more than the submission itself.
"""

from __future__ import annotations

import os


def home_dir() -> str:
    """`$HPCBATCH_HOME`, else `~/.hpcbatch`."""
    env = os.environ.get("HPCBATCH_HOME")
    if env:
        return os.path.expanduser(env)
    return os.path.join(os.path.expanduser("~"), ".hpcbatch")


def socket_path(home: str | None = None) -> str:
    """`$HPCBATCH_SOCKET`, else `controller.sock` in `home` (default: `home_dir()`)."""
    env = os.environ.get("HPCBATCH_SOCKET")
    if env:
        return os.path.expanduser(env)
    return os.path.join(home or home_dir(), "controller.sock")
