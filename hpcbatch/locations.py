"""Where the controller keeps its state and socket, by default.

Two kinds of controller: a personal one (state and socket in `~/.hpcbatch`,
for one user's own hosts) and the shared one of a cluster, run as a service
with `hpcbatch controller --system` (state in /var/lib/hpcbatch, socket
/run/hpcbatch/controller.sock, docs/security.md). A client with nothing set
uses its user's own controller when one is running, else the system one, so
every user of a shared cluster finds it without setting anything.

Standard library and `os.path` only: `hpcbatch submit` resolves the socket on
every call, and importing `pathlib` or the controller's settings would cost its
start-up more than the submission itself.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

SYSTEM_HOME = "/var/lib/hpcbatch"
SYSTEM_SOCKET = "/run/hpcbatch/controller.sock"
SYSTEM_INVENTORY = "/etc/hpcbatch/inventory.toml"


def home_dir() -> str:
    """`$HPCBATCH_HOME`, else `~/.hpcbatch`."""
    env = os.environ.get("HPCBATCH_HOME")
    if env:
        return os.path.expanduser(env)
    return os.path.join(os.path.expanduser("~"), ".hpcbatch")


def system_home() -> str:
    """The system controller's state: /var/lib/hpcbatch (`$HPCBATCH_SYSTEM_HOME`
    moves it, for packagers and tests)."""
    return os.environ.get("HPCBATCH_SYSTEM_HOME") or SYSTEM_HOME


def system_socket() -> str:
    """The system controller's socket: /run/hpcbatch/controller.sock
    (`$HPCBATCH_SYSTEM_SOCKET` moves it, for packagers and tests)."""
    return os.environ.get("HPCBATCH_SYSTEM_SOCKET") or SYSTEM_SOCKET


def socket_path(home: str | None = None, *, exists: Callable[[str], bool] = os.path.exists) -> str:
    """The controller socket a client uses.

    `$HPCBATCH_SOCKET` if set; else `controller.sock` in `home` if given, or in
    `$HPCBATCH_HOME` if set; else the user's own `~/.hpcbatch/controller.sock`
    if a personal controller made it, else the system controller's socket if
    there is one, else the personal path (whose absence the error names).
    """
    env = os.environ.get("HPCBATCH_SOCKET")
    if env:
        return os.path.expanduser(env)
    if home or os.environ.get("HPCBATCH_HOME"):
        return os.path.join(home or home_dir(), "controller.sock")
    personal = os.path.join(home_dir(), "controller.sock")
    if exists(personal):
        return personal
    system = system_socket()
    return system if exists(system) else personal
