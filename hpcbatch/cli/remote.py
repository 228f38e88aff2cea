"""Reaching a controller on another machine: its Unix socket, forwarded over SSH.

`hpcbatch --cluster user@login-host ...` (or a cluster named in clusters.toml)
runs OpenSSH with the user's own login and keys: a ControlMaster connection
kept in the user's runtime directory forwards a local Unix socket to the
controller's socket on the far machine (`ssh -L local.sock:remote.sock`). The
controller sees the forwarding sshd's peer credentials, i.e. the user's login
on its own machine: no new password or token, and the same JSON API over the
socket. The forward is started once and reused by later commands; it exits by
itself after ControlPersist's idle time.

Standard library only, and imported only when `--cluster` is given: a local
`hpcbatch submit` pays nothing for it.
"""

from __future__ import annotations

import os

from hpcbatch.client import Client, ClientError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_REMOTE_SOCKET = "/run/hpcbatch/controller.sock"
"""Where a system controller (`hpcbatch controller --system`) listens."""
PERSIST_S = 600
CONNECT_TIMEOUT_S = 10


class Target:
    """One controller: how to log in to its machine and where its socket lies there.

    A plain class, not a dataclass: `--cluster` start-up pays for no imports.
    """

    def __init__(
        self,
        destination: str,  # [user@]host, or a Host alias of the ssh_config
        socket: str = DEFAULT_REMOTE_SOCKET,
        port: int | None = None,
        ssh_config: str | None = None,
    ) -> None:
        self.destination = destination
        self.socket = socket
        self.port = port
        self.ssh_config = ssh_config

    def key(self) -> str:
        """A short file name for this target's forward (a readable host, a checksum)."""
        import zlib

        text = f"{self.destination}\0{self.port}\0{self.socket}\0{self.ssh_config}".encode()
        host = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in self.destination)
        return f"{host[:24]}-{zlib.crc32(text):08x}{zlib.adler32(text):08x}"

    def describe(self) -> str:
        port = f" port {self.port}" if self.port else ""
        return f"{self.socket} on {self.destination}{port}"


def clusters_file() -> str:
    """$HPCBATCH_CLUSTERS, or clusters.toml in the user's hpcbatch config directory."""
    explicit = os.environ.get("HPCBATCH_CLUSTERS")
    if explicit:
        return os.path.expanduser(explicit)
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(config, "hpcbatch", "clusters.toml")


def parse_spec(spec: str) -> Target:
    """`[user@]host[:/remote/controller.sock]` as one target."""
    spec = spec.strip()
    host, sep, path = spec.partition(":")
    if not host or (sep and not path.startswith("/")):
        raise ClientError(
            "usage",
            f"--cluster {spec!r}: expected a name from {clusters_file()} or "
            "[user@]host[:/path/of/controller.sock]",
        )
    return Target(destination=host, socket=path or DEFAULT_REMOTE_SOCKET)


def _field(where: str, table: dict[str, Any], name: str, kind: type) -> Any:
    value = table.get(name)
    if value is not None and not isinstance(value, kind):
        raise ClientError("usage", f"{where}: {name} must be a {kind.__name__}")
    return value


def _target(where: str, table: dict[str, Any], base: dict[str, Any]) -> Target:
    merged = {**base, **table}
    host = _field(where, merged, "host", str)
    if not host:
        raise ClientError("usage", f"{where}: host is missing")
    user = _field(where, merged, "user", str)
    port = _field(where, merged, "port", int)
    config = _field(where, merged, "ssh_config", str)
    socket = _field(where, merged, "socket", str) or DEFAULT_REMOTE_SOCKET
    return Target(
        destination=f"{user}@{host}" if user else host,
        socket=socket,
        port=port,
        ssh_config=os.path.expanduser(config) if config else None,
    )


def load_cluster(name: str, path: str) -> list[Target] | None:
    """The controllers of cluster `name` in clusters.toml at `path`, or None if not named.

    A cluster is a table `[clusters.NAME]` with host, user, port, socket and
    ssh_config; several controllers (active/standby) are `[[clusters.NAME.controllers]]`
    entries, each overriding those keys, tried in order.
    """
    if not os.path.exists(path):
        return None
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ClientError("usage", f"{path}: {exc}") from None
    clusters = data.get("clusters", {})
    if not isinstance(clusters, dict) or name not in clusters:
        return None
    table = clusters[name]
    where = f"{path}: clusters.{name}"
    if not isinstance(table, dict):
        raise ClientError("usage", f"{where} must be a table")
    controllers = table.get("controllers")
    base = {k: v for k, v in table.items() if k != "controllers"}
    if controllers is None:
        return [_target(where, {}, base)]
    if not isinstance(controllers, list) or not controllers:
        raise ClientError("usage", f"{where}.controllers must be a non-empty array of tables")
    return [
        _target(f"{where}.controllers[{i}]", c if isinstance(c, dict) else {}, base)
        for i, c in enumerate(controllers)
    ]


def targets(spec: str) -> list[Target]:
    return load_cluster(spec, clusters_file()) or [parse_spec(spec)]


def runtime_dir() -> str:
    """A private directory for the forwards' sockets: $XDG_RUNTIME_DIR/hpcbatch."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    where = os.path.join(base, "hpcbatch") if base else f"/tmp/hpcbatch-{os.getuid()}"
    os.makedirs(where, mode=0o700, exist_ok=True)
    if os.stat(where).st_uid != os.getuid():
        raise ClientError("unavailable", f"{where} belongs to another user: set XDG_RUNTIME_DIR")
    return where


def _paths(target: Target) -> tuple[str, str, str]:
    where = runtime_dir()
    key = target.key()
    return (
        os.path.join(where, f"{key}.sock"),
        os.path.join(where, f"{key}.ctl"),
        os.path.join(where, f"{key}.log"),
    )


def _ssh_base(target: Target, control: str) -> list[str]:
    argv = ["ssh"]
    if target.ssh_config:
        argv += ["-F", target.ssh_config]
    if target.port:
        argv += ["-p", str(target.port)]
    return [*argv, "-o", f"ControlPath={control}"]


def _ping(path: str) -> Any:
    """The controller's ping answer through `path`, or None when nothing answers there."""
    if not os.path.exists(path):
        return None
    try:
        with Client(path, timeout=CONNECT_TIMEOUT_S) as client:
            return client.call("ping")
    except (ClientError, OSError, ValueError):
        return None


def _start_forward(target: Target, local: str, control: str, log: str) -> None:
    import subprocess

    stop_forward(target)  # a master whose forward went stale
    for stale in (local, control):
        if os.path.exists(stale):
            os.unlink(stale)
    argv = [
        *_ssh_base(target, control),
        "-o", "ControlMaster=yes",
        "-o", f"ControlPersist={PERSIST_S}",
        "-o", "ExitOnForwardFailure=yes",
        "-o", "StreamLocalBindUnlink=yes",
        "-o", "StreamLocalBindMask=0177",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
        "-o", "ServerAliveInterval=15",
        "-f", "-N", "-L", f"{local}:{target.socket}",
        target.destination,
    ]  # fmt: skip
    # stderr to a file, not a pipe: the backgrounded master keeps it open.
    with open(log, "wb") as err:
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=CONNECT_TIMEOUT_S * 3,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise ClientError("unavailable", "ssh (OpenSSH's client) is not installed") from None
        except subprocess.TimeoutExpired:
            raise ClientError("unavailable", f"ssh to {target.destination} timed out") from None
    if done.returncode != 0:
        with open(log, errors="replace") as f:
            why = " ".join(f.read().split()[-40:]) or f"exit status {done.returncode}"
        raise ClientError(
            "unavailable", f"cannot forward the controller socket {target.describe()}: {why}"
        )


def forward(target: Target) -> tuple[str, Any]:
    """A local socket reaching `target`'s controller (a forward started if none
    answers yet), and the controller's ping answer."""
    local, control, log = _paths(target)
    info = _ping(local)
    if info is None:
        _start_forward(target, local, control, log)
        with Client(local, timeout=CONNECT_TIMEOUT_S) as client:
            info = client.call("ping")
    return local, info


def _active(info: Any) -> bool:
    """Whether a controller's ping says it serves (a standby says `role: standby`)."""
    return not (isinstance(info, dict) and info.get("role") == "standby")


def forwarded_socket(spec: str) -> str:
    """The local socket of the active controller of cluster `spec` (tried in order)."""
    reasons: list[str] = []
    for target in targets(spec):
        try:
            local, info = forward(target)
        except ClientError as exc:
            reasons.append(exc.message)
            continue
        except OSError as exc:
            reasons.append(f"{target.describe()}: {exc}")
            continue
        if _active(info):
            return local
        reasons.append(f"{target.describe()}: a standby controller")
    raise ClientError("unavailable", f"no active controller for {spec}: " + "; ".join(reasons))


def stop_forward(target: Target) -> None:
    """End the forward's ControlMaster connection, if one runs."""
    local, control, _ = _paths(target)
    if not os.path.exists(control):
        return
    import subprocess

    subprocess.run(
        [*_ssh_base(target, control), "-O", "exit", target.destination],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=CONNECT_TIMEOUT_S,
    )
    if os.path.exists(local):
        os.unlink(local)


def disconnect(spec: str) -> None:
    for target in targets(spec):
        stop_forward(target)
