"""`hpcbatch-rsh HOST COMMAND...`: an rsh/ssh stand-in that reaches the job's other nodes.

MPI launchers start their daemons with an rsh-like program (OpenMPI:
`plm_rsh_agent`; MPICH/Hydra: `-launcher-exec`). Inside an hpcbatch job this
one is first on PATH and named in the MPI environment variables, so `mpirun`
needs no passwordless SSH between compute nodes: the command goes through the
hpcbatch agent's relay (see relay.py) to the node's agent, and runs inside that
node's attempt of the same job. Only the job's own nodes are reachable.

Accepts ssh's and rsh's argument forms: options (`-x`, `-n`, `-o X`, `-p N`,
`-l user`, ...) are skipped, `user@host` is the host, and the remaining words
are joined with spaces and run by `/bin/sh -c` on the target, as ssh does.
Exit status: the command's, 128+N if it died of signal N, 255 when it could
not be run. Killing this process kills the remote command.

What the remote command used (its CPU time and largest resident size on its
node, from the target agent's wait4) comes back with its exit status; srun
names a directory in HPCBATCH_STEP_USAGE where each hpcbatch-rsh of its step
leaves that, and adds it up into the step's usage (`step_usage`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import selectors
import shutil
import socket
import sys

from hpcbatch.transport.agent.relay import sock_address

STEP_USAGE = "HPCBATCH_STEP_USAGE"  # srun's directory for its remote tasks' usage
USAGE_KEYS = ("cpu_user_s", "cpu_sys_s", "mem_peak_bytes")

NO_ARG = set("1246AaCfGgKkMNnqsTtVvXxYyd")
WITH_ARG = set("BbcDEeFIiJLlmOopQRSWw")


class UsageError(ValueError):
    """Arguments hpcbatch-rsh cannot use."""


def parse_argv(argv: list[str]) -> tuple[str, list[str], bool]:
    """(host, command words, stdin closed) from rsh/ssh-style arguments."""
    i = 0
    no_stdin = False
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        j = 1
        while j < len(arg):
            c = arg[j]
            if c in WITH_ARG:
                if j + 1 == len(arg):
                    if i >= len(argv):
                        raise UsageError(f"option -{c} needs a value")
                    i += 1
                break
            if c not in NO_ARG:
                raise UsageError(f"unknown option -{c}")
            no_stdin = no_stdin or c in "nf"
            j += 1
    if i >= len(argv):
        raise UsageError("no host given")
    host = argv[i].rsplit("@", 1)[-1]
    words = argv[i + 1 :]
    if not words:
        raise UsageError("no command given (interactive logins are not supported)")
    return host, words, no_stdin


def connect() -> socket.socket:
    name = os.environ.get("HPCBATCH_RELAY")
    if not name or not os.environ.get("HPCBATCH_RELAY_TOKEN"):
        raise UsageError("not inside an hpcbatch job (HPCBATCH_RELAY is not set)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(sock_address(name))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot reach the hpcbatch agent's relay ({exc})") from None
    return sock


def run(host: str, command: str, no_stdin: bool) -> int:
    sock = connect()
    hello = {
        "token": os.environ.get("HPCBATCH_RELAY_TOKEN"),
        "attempt": os.environ.get("HPCBATCH_ATTEMPT_ID"),
        "host": host,
        "command": command,
    }
    sock.sendall((json.dumps(hello) + "\n").encode())
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "sock")
    if no_stdin:
        sock.sendall(b'{"eof": true}\n')
    else:
        try:
            sel.register(0, selectors.EVENT_READ, "stdin")
        except (ValueError, OSError):  # stdin closed, or a regular file: read it at once
            data = b"" if _closed(0) else os.read(0, 1 << 20)
            if data:
                sock.sendall((json.dumps({"in": base64.b64encode(data).decode()}) + "\n").encode())
            sock.sendall(b'{"eof": true}\n')
    buf = b""
    while True:
        for key, _ in sel.select():
            if key.data == "stdin":
                data = os.read(0, 65536)
                line: dict[str, object] = {"in": base64.b64encode(data).decode()}
                if not data:
                    sel.unregister(0)
                    line = {"eof": True}
                sock.sendall((json.dumps(line) + "\n").encode())
                continue
            chunk = sock.recv(65536)
            if not chunk:
                sys.stderr.write(f"hpcbatch-rsh: {host}: the relay closed the connection\n")
                return 255
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                msg = json.loads(raw)
                if "exit" in msg:
                    return _status(host, msg)
                _write(int(msg.get("fd") or 1), base64.b64decode(msg.get("data") or ""))


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def _write(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd if fd in (1, 2) else 1, data) :]


def note_usage(used: object) -> None:
    """Leave what the remote command used where the step that started it adds it up."""
    where = os.environ.get(STEP_USAGE)
    if not where or not isinstance(used, dict):
        return
    with contextlib.suppress(OSError), open(os.path.join(where, f"{os.getpid()}.json"), "w") as f:
        json.dump({k: used.get(k) for k in USAGE_KEYS}, f)


def step_usage(where: str) -> dict[str, float]:
    """What a step's remote commands used, from the notes left in `where` (then removed):
    CPU times added up, the largest resident size. A note that is not numbers is left out."""
    total = {"cpu_user_s": 0.0, "cpu_sys_s": 0.0, "mem_peak_bytes": 0.0}
    with contextlib.suppress(OSError):
        for name in os.listdir(where):
            try:
                with open(os.path.join(where, name)) as f:
                    note = json.load(f)
                cpu = [float(note["cpu_user_s"]), float(note["cpu_sys_s"])]
                peak = float(note["mem_peak_bytes"])
            except (OSError, ValueError, TypeError, KeyError):
                continue
            total["cpu_user_s"] += cpu[0]
            total["cpu_sys_s"] += cpu[1]
            total["mem_peak_bytes"] = max(total["mem_peak_bytes"], peak)
    shutil.rmtree(where, ignore_errors=True)
    return total


def _status(host: str, msg: dict[str, object]) -> int:
    note_usage(msg.get("usage"))
    if msg.get("error"):
        sys.stderr.write(f"hpcbatch-rsh: {host}: {msg['error']}\n")
    code, sig = msg.get("exit"), msg.get("signal")
    if isinstance(code, int):
        return code
    if isinstance(sig, int):
        return 128 + sig
    return 255


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        host, words, no_stdin = parse_argv(args)
        return run(host, " ".join(words), no_stdin)
    except UsageError as exc:
        sys.stderr.write(f"hpcbatch-rsh: {exc}\n")
        sys.stderr.write("usage: hpcbatch-rsh [ssh options] HOST COMMAND...\n")
        return 255
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141
