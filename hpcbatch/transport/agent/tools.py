"""Smaller parts of the host agent: the `exec` op's runs, launch files, the shims.

`ExecRun` runs one short command for the `exec` op without blocking the
agent; `want_files` checks a launch's `files`; `write_shims` writes
`hpcbatch-rsh` and `srun` into the agent's bin directory, as wrappers that
import them from the agent's own code (the zipapp on hosts), so the shims are
always the agent's version.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from hpcbatch.transport.agent.procs import OUTPUT_CAP, signal_group, want
from hpcbatch.transport.agent.protocol import BadRequest, ExecReply

if TYPE_CHECKING:
    from hpcbatch.transport.agent.loop import AgentHost

FILE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
RESERVED = frozenset({"script", "env.json", "meta.json", "stdout", "stderr", "pid", "kill",
                      "exit", "collected", "relayed", "work"})  # fmt: skip
SHIM_TEMPLATE = """#!{python}
# hpcbatch {name}: written by the hpcbatch agent (rewritten on every agent start)
import sys
sys.path.insert(0, {path!r})
from hpcbatch.transport.agent.{module} import main
sys.exit(main())
"""
SHIMS = (("hpcbatch-rsh", "rsh"), ("srun", "srun"))


def code_location() -> tuple[str, str]:
    """(file to hash for the version, sys.path entry holding the `hpcbatch` package):
    the zipapp when run from one (as on hosts), else the source tree."""
    archive = getattr(globals().get("__loader__"), "archive", None)
    if isinstance(archive, str):
        return archive, archive
    here = os.path.abspath(__file__)
    return here, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(here))))


def write_shims(bin_dir: str) -> None:
    """hpcbatch-rsh and srun, first on every job's PATH, run from this agent's code."""
    os.makedirs(bin_dir, exist_ok=True)
    path = code_location()[1]
    for name, module in SHIMS:
        text = SHIM_TEMPLATE.format(python=sys.executable, name=name, path=path, module=module)
        target = os.path.join(bin_dir, name)
        try:
            with open(target) as f:
                if f.read() == text:
                    continue
        except OSError:
            pass
        tmp = f"{target}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)


def want_files(req: dict[str, Any]) -> dict[str, str]:
    """The launch's `files`: small text files (hostfiles) written into the attempt dir."""
    files = want(req, "files", dict, {})
    for name, text in files.items():
        if not FILE_RE.fullmatch(name) or name in RESERVED or not isinstance(text, str):
            raise BadRequest(f"bad file {name!r} in 'files' (or a name hpcbatch uses itself)")
    return dict(files)


class ExecRun:
    """One `exec` request. Output goes to temporary files, so nothing here can block."""

    def __init__(
        self, agent: AgentHost, rid: int, argv: list[str], env: dict[str, str], timeout: float
    ):
        self.agent, self.rid, self.done, self.timed_out = agent, rid, False, False
        self.files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self.files[0], stderr=self.files[1],
                env=env, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            self.close()
            raise BadRequest(f"cannot run {argv[0]}: {exc}") from None
        agent.watch(self.proc.pid, None, True, self.on_exit)
        agent.after(timeout, self.on_timeout)

    def on_timeout(self) -> None:
        if not self.done:
            self.timed_out = True
            signal_group(self.proc.pid, signal.SIGKILL)

    def on_exit(self) -> None:
        rc = self.proc.wait()
        self.done = True
        out = []
        for f in self.files:
            f.seek(0)
            out.append(f.read(OUTPUT_CAP).decode(errors="replace"))
        self.close()
        reply: ExecReply = {
            "code": rc if rc >= 0 else None, "signal": -rc if rc < 0 else None,
            "timed_out": self.timed_out, "stdout": out[0], "stderr": out[1],
        }  # fmt: skip
        self.agent.send({"id": self.rid, "ok": True, **reply})

    def close(self) -> None:
        for f in self.files:
            f.close()
