"""The `hpcbatch` entry point, with a quick path for `hpcbatch submit`.

A shell loop of `hpcbatch submit` pays for the process's start-up on every
call, and Python's start-up was most of it: the parser's option table and
regular expressions, `json` (which loads `re`, `enum`, `functools` and
`collections`) and `site`. Here `submit` sends its arguments as typed, with
its working directory, to the controller's `submit_argv` operation, which runs
the CLI's own parser (`core.submitargv`) and asks back for the script a file
argument names, and for the environment where the submission exports some of
it (`--export`; else it stays here); so this path imports only `os`,
`_socket` and `_json` (CPython's JSON accelerator). Started by the launcher
that `make venv` writes (`python -S`, see `write_launcher`), it skips `site`
as well.

Everything else, and any submission this path does not take on, goes to the
full CLI (`cli.main`), which is loaded only then: help and `--json`, a
remote cluster, a time read in the submitter's time zone (`--begin`), and
every refusal, so that each error is the full CLI's own, word for word (a
refused submission has created nothing, so asking again is safe).
"""

from __future__ import annotations

import io
import os
import sys

from hpcbatch.cli.globalopts import split_globals

TYPE_CHECKING = False  # importing typing would cost the quick path ~4 ms of start-up
if TYPE_CHECKING:
    from typing import Any

SUBMIT_TIMEOUT_S = 30.0  # as the full CLI's client


class Fallback(Exception):
    """This submission is for the full CLI; nothing has been submitted."""


def _quick_socket(globals_: dict[str, str], rest: list[str]) -> str | None:
    """The controller socket for a submission this path takes on, else None."""
    if not rest or rest[0] != "submit" or not _has_json():
        return None
    if any(tok in ("-h", "--help", "--usage", "--json") for tok in rest):
        return None
    if "socket" in globals_:
        return os.path.expanduser(globals_["socket"])
    home = globals_.get("home")
    if "cluster" in globals_ or (not home and os.environ.get("HPCBATCH_CLUSTER")):
        return None  # a controller on another machine: the full CLI forwards its socket
    from hpcbatch.locations import socket_path

    return socket_path(os.path.expanduser(home) if home else None)


def _has_json() -> bool:
    try:
        import _json  # noqa: F401
    except ImportError:  # not CPython: the full CLI's `json` does it
        return False
    return True


# --------------------------------------------------------------------------- the wire


def _dump(value: Any) -> str:
    """JSON for the request's kinds of value (strings, lists, objects, flags)."""
    from _json import encode_basestring_ascii

    if isinstance(value, str):
        return str(encode_basestring_ascii(value))
    if value is None or isinstance(value, bool):
        return "null" if value is None else ("true" if value else "false")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        items = (f"{encode_basestring_ascii(str(k))}:{_dump(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    return "[" + ",".join(_dump(v) for v in value) + "]"


class _Scanner:
    """What `_json.make_scanner` reads from a decoder: plain JSON, as `json.loads`."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity


class Connection:
    """One connection to the controller's API socket, one request at a time."""

    def __init__(self, path: str, timeout: float | None) -> None:
        import _json
        import _socket

        context: Any = _Scanner()  # typeshed types the argument as a decoder
        self._scan = _json.make_scanner(context)
        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError:
            self._sock.close()
            raise Fallback from None  # the full CLI says why, in its words
        self._buf = b""
        self._next = 0

    def close(self) -> None:
        self._sock.close()

    def set_timeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def send(self, op: str, args: dict[str, Any]) -> None:
        self._next += 1
        self._sock.sendall(_dump({"id": self._next, "op": op, **args}).encode() + b"\n")

    def receive(self) -> dict[str, Any]:
        """The reply to the request sent last: `{"ok": ..., "result"/"error": ...}`."""
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("the controller closed the connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        reply: dict[str, Any] = self._scan(line.decode("utf-8"), 0)[0]
        return reply


# --------------------------------------------------------------------------- submit


def _script(path: str) -> tuple[str, str]:
    """The script the controller asked for, and its resolved path; the full CLI
    reports a file that cannot be read."""
    if path == "-":
        if sys.stdin is None:
            raise Fallback
        text = sys.stdin.read()
        sys.stdin = io.StringIO(text)  # read again by the full CLI after a refusal
        return text, "-"
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(), os.path.realpath(path)
    except (OSError, UnicodeDecodeError):
        raise Fallback from None


def _submit_argv(conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
    """One `submit_argv` round trip; Fallback if the request could not be sent (the
    controller closed on us: nothing was submitted)."""
    try:
        conn.send("submit_argv", args)
    except TimeoutError:
        raise
    except OSError:
        raise Fallback from None
    return conn.receive()


def _umask() -> int:
    """This process's umask, sent with the job (cli.submit.current_umask's twin)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def submit(socket_path: str, argv: list[str]) -> int:
    """`hpcbatch submit ARGV` through `submit_argv`; raises Fallback before anything
    is submitted where the full CLI must do it."""
    waits = "-W" in argv or "--wait" in argv  # as the full CLI: no time limit at all then
    conn = Connection(socket_path, None if waits else SUBMIT_TIMEOUT_S)
    try:
        args: dict[str, Any] = {
            "argv": argv,
            "cwd": os.getcwd(),
            "umask": _umask(),
            "stdin_piped": sys.stdin is not None and not sys.stdin.isatty(),
        }
        reply = _submit_argv(conn, args)
        for _ in range(2):  # the controller asks for the script, then the environment
            asked = reply.get("result") if reply.get("ok") else None
            if not isinstance(asked, dict) or "job_id" in asked:
                break
            if "need_script" in asked and "script" not in args:
                path = str(asked["need_script"])
                text, real = _script(path)
                args.update(script=text, script_for=path, script_realpath=real)
            elif asked.get("need_env") and "env" not in args:
                args["env"] = dict(os.environ)
            else:
                break
            reply = _submit_argv(conn, args)
        result: Any = reply.get("result")
        if not reply.get("ok") or "job_id" not in result:
            raise Fallback  # a refusal, or a submission to parse there: nothing was made
        return _report(conn, result)
    finally:
        conn.close()


def _report(conn: Connection, result: dict[str, Any]) -> int:
    """Print what `hpcbatch submit` prints, and with `--wait`, wait for the job."""
    for warning in result["warnings"]:
        print(f"hpcbatch: warning: {warning}", file=sys.stderr)
    job_id = result["job_id"]
    if result["parsable"]:
        print(job_id)
    else:
        size = result.get("array_size")
        print(f"Submitted job {job_id}" + (f" (array of {size})" if size else ""))
    if not result["wait"]:
        return 0
    sys.stdout.flush()
    conn.set_timeout(None)
    conn.send("wait", {"job_ids": [job_id]})
    reply = conn.receive()
    if not reply.get("ok"):
        _say(str(reply.get("error", "failed")))
        return 1
    (final,) = reply["result"]
    return 0 if final["state"] == "SUCCEEDED" else 1


def _say(message: str) -> None:
    from hpcbatch.core.text import printable  # the message may quote another's input

    print(f"hpcbatch: {printable(message)}", file=sys.stderr)


# --------------------------------------------------------------------------- entry


def full_cli(argv: list[str]) -> int:
    """The whole CLI, with `site` loaded first where the launcher skipped it."""
    if sys.flags.no_site:
        import site

        site.main()
    from hpcbatch.cli.main import main as full

    return full(argv)


def main(argv: list[str] | None = None) -> int:
    """`hpcbatch`: the quick path for `submit`, the full CLI for everything else."""
    argv = list(sys.argv[1:] if argv is None else argv)
    globals_, rest = split_globals(argv)
    path = _quick_socket(globals_, rest)
    if path is None:
        return full_cli(argv)
    try:
        return submit(path, rest[1:])
    except Fallback:
        return full_cli(argv)
    except TimeoutError:
        _say("the controller did not answer in time")
        return 1
    except BrokenPipeError:  # our output's reader went away
        return 0
    except OSError:  # ConnectionError and the like, once the request was sent
        _say("the controller closed the connection")
        return 1
    except KeyboardInterrupt:
        return 130


LAUNCHER = """#!{python} -S
# hpcbatch's launcher, written by `make venv` (hpcbatch.cli.quick.write_launcher):
# pip's own entry point imports `site` and `re` before anything else, which costs
# `hpcbatch submit` a third of its time. `site` is loaded later where it is needed.
import sys

sys.path.append({where!r})
from hpcbatch.cli.quick import main

sys.exit(main())
"""


def write_launcher(path: str) -> None:
    """Write the `hpcbatch` launcher at `path` for this interpreter and this install."""
    import hpcbatch

    where = os.path.dirname(os.path.dirname(os.path.abspath(hpcbatch.__file__)))
    text = LAUNCHER.format(python=sys.executable, where=where)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write-launcher"] and len(sys.argv) == 3:
        write_launcher(sys.argv[2])
        sys.exit(0)
    sys.exit(main())
