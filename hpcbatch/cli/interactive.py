"""Interactive work: `hpcbatch exec`, `hpcbatch alloc` (salloc) and `hpcbatch run --pty`.

* `exec JOB [--pty] CMD...` runs CMD inside a running job of yours, on its
  main node (`--node N` for another), in that node's attempt: the job's
  environment, its srun and mpirun settings. Output and the exit status come
  back; stdin goes to it; with `--pty` it gets a pseudo-terminal with this
  terminal's size (kept in step on SIGWINCH) and this terminal is put in raw
  mode, so ^C and full-screen programs behave as over ssh -t.
* `alloc [sbatch options] [CMD...]` submits a job that holds its nodes, waits
  until it runs, then runs CMD (default: $SHELL) here, on the submit side, with
  SLURM_JOB_ID/HPCBATCH_JOB_ID set and `srun`/`mpirun` on PATH that run on the
  allocation (through `exec`). When CMD ends the allocation is released.
* `run --pty CMD` is alloc's job with `exec --pty CMD` on its first node.

The controller side is controller/execs.py (ops exec_start/read/input/resize/kill).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from hpcbatch.client import Client, ClientError

HOLD_SCRIPT = "#!/bin/sh\nexec sleep infinity\n"
READ_WAIT_S = 10.0


def _winsize() -> list[int]:
    try:
        import fcntl
        import termios

        raw = fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)
        rows, cols = struct.unpack("HHHH", raw)[:2]
        return [rows or 24, cols or 80]
    except (OSError, ImportError):
        return [24, 80]


def _pump_stdin(socket: str, key: str) -> None:
    """This terminal's (or pipe's) input to the command, until EOF."""
    with contextlib.suppress(ClientError, OSError), Client(socket, timeout=None) as client:
        while True:
            data = os.read(0, 65536)
            client.call("exec_input", key=key, data=base64.b64encode(data).decode(),
                        eof=not data)  # fmt: skip
            if not data:
                return


def exec_in_job(socket: str, job_id: int, argv: list[str], *, pty: bool, node: int = 0) -> int:
    """Run argv in the running job; its exit status (128+N for signal N, 255 if it failed)."""
    command = shlex.join(argv)
    if pty:
        command = f"TERM={shlex.quote(os.environ.get('TERM') or 'xterm')} exec {command}"
    with Client(socket, timeout=None) as client:
        size = _winsize() if pty else None
        key = client.call("exec_start", job_id=job_id, node=node, command=command, pty=size)["key"]
        old_tty = _raw_mode() if pty and os.isatty(0) else None
        if pty and os.isatty(0):
            _on_resize(socket, key)
        threading.Thread(target=_pump_stdin, args=(socket, key), daemon=True).start()
        try:
            return _read_until_exit(client, key)
        except KeyboardInterrupt:
            with Client(socket, timeout=10) as fresh:  # the interrupted reply is on `client`
                fresh.call("exec_kill", key=key)
            return 130
        finally:
            if old_tty is not None:
                _restore(old_tty)


def _read_until_exit(client: Client, key: str) -> int:
    index = 0
    while True:
        got = client.call("exec_read", key=key, index=index, timeout_s=READ_WAIT_S)
        for chunk in got["chunks"]:
            data = base64.b64decode(chunk["data"])
            fd = 2 if chunk["fd"] == 2 else 1
            while data:
                data = data[os.write(fd, data) :]
        index = got["next"]
        end = got.get("exit")
        if end is not None:
            if end.get("error"):
                sys.stderr.write(f"hpcbatch: {end['error']}\n")
            if isinstance(end.get("code"), int):
                return int(end["code"])
            return 128 + int(end["signal"]) if isinstance(end.get("signal"), int) else 255


def _raw_mode() -> Any:
    import termios
    import tty

    old = termios.tcgetattr(0)
    tty.setraw(0)
    return old


def _restore(old: Any) -> None:
    import termios

    with contextlib.suppress(OSError):
        termios.tcsetattr(0, termios.TCSADRAIN, old)


def _on_resize(socket: str, key: str) -> None:
    def resized(signum: int, frame: object) -> None:
        with contextlib.suppress(ClientError, OSError), Client(socket, timeout=5) as c:
            c.call("exec_resize", key=key, size=_winsize())

    signal.signal(signal.SIGWINCH, resized)


def hold_until_running(client: Client, request: dict[str, Any], quiet: bool = False) -> int:
    """Submit a job that holds its nodes; its id once it runs (SystemExit if it cannot)."""
    held = dict(request, script=HOLD_SCRIPT, args=[])
    job_id = int(client.call("submit", request=held)["job_id"])
    if not quiet:
        sys.stderr.write(f"hpcbatch: pending job allocation {job_id}\n")
    try:
        return _until_running(client, job_id, quiet)
    except KeyboardInterrupt:
        with Client(client.path, timeout=10) as fresh:  # the interrupted reply is on `client`
            release(fresh, job_id, "allocation request interrupted", quiet)
        raise


def _until_running(client: Client, job_id: int, quiet: bool) -> int:
    while True:
        job = client.call("show", job_id=job_id)
        if job["state"] == "RUNNING":
            hosts = ",".join(job.get("hosts") or [])
            if not quiet:
                sys.stderr.write(f"hpcbatch: job {job_id} has been allocated nodes {hosts}\n")
            return job_id
        if job["state"] in ("SUCCEEDED", "FAILED"):
            raise SystemExit(f"hpcbatch: allocation {job_id} {job['state']}: {job.get('reason')}")
        try:
            client.call("wait", job_ids=[job_id], timeout_s=0.2)
        except ClientError as exc:
            if exc.kind != "timeout":
                raise


def release(client: Client, job_id: int, why: str, quiet: bool = False) -> None:
    if not quiet:
        sys.stderr.write(f"hpcbatch: relinquishing job allocation {job_id}\n")
    with contextlib.suppress(ClientError):
        client.call("cancel", job_ids=[job_id], reason=why)


def shim_dir(job_id: int, socket: str) -> str:
    """A directory with `srun` and `mpirun` that run on the allocation."""
    where = tempfile.mkdtemp(prefix=f"hpcbatch-alloc-{job_id}-")
    for name in ("srun", "mpirun", "mpiexec"):
        path = os.path.join(where, name)
        with open(path, "w") as f:
            f.write(
                "#!/bin/sh\n"
                f"exec {shlex.quote(sys.executable)} -m hpcbatch.cli.main "
                f'--socket {shlex.quote(socket)} exec "$SLURM_JOB_ID" -- {name} "$@"\n'
            )
        os.chmod(path, 0o755)
    return where


def allocate(socket: str, request: dict[str, Any], argv: list[str]) -> int:
    """salloc: hold nodes, run argv (or $SHELL) here with srun/mpirun aimed at them."""
    with Client(socket, timeout=None) as client:
        try:
            job_id = hold_until_running(client, request)
        except KeyboardInterrupt:
            return 130
        shims = shim_dir(job_id, socket)
        env = dict(os.environ, SLURM_JOB_ID=str(job_id), SLURM_JOBID=str(job_id),
                   HPCBATCH_JOB_ID=str(job_id), HPCBATCH_SOCKET=socket,
                   PATH=shims + os.pathsep + os.environ.get("PATH", ""))  # fmt: skip
        command = argv or [os.environ.get("SHELL") or "/bin/sh"]
        try:
            proc = subprocess.Popen(command, env=env)
            while True:
                try:
                    code = proc.wait()
                    break
                except KeyboardInterrupt:
                    continue  # ^C belongs to the shell
        except OSError as exc:
            sys.stderr.write(f"hpcbatch: alloc: cannot run {command[0]}: {exc}\n")
            code = 127
        finally:
            release(client, job_id, "allocation released (alloc ended)")
            shutil.rmtree(shims, ignore_errors=True)
    return code


def run_pty(socket: str, request: dict[str, Any], argv: list[str]) -> int:
    """run --pty: hold a node, run argv there on a pseudo-terminal, release it."""
    with Client(socket, timeout=None) as client:
        try:
            job_id = hold_until_running(client, request, quiet=True)
        except KeyboardInterrupt:
            return 130
        started = time.monotonic()
        try:
            return exec_in_job(socket, job_id, argv, pty=True)
        finally:
            why = f"run --pty ended after {time.monotonic() - started:.0f} s"
            release(client, job_id, why, quiet=True)
