"""The host agent as the zipapp the controller uploads.

Why it exists apart from the agent package: building the archive is the
controller's work (zipfile, importlib.resources); the agent's processes on a
host import the package, and should not carry what only the builder needs.
`archive()` is deterministic (fixed timestamps and order), so its content hash
names the uploaded file and a new version is uploaded exactly when the code
changes. On the host: `python3 agent-<hash>.pyz --root DIR`.
"""

from __future__ import annotations

import io
import zipfile
from importlib import resources

MODULES = (
    "__init__.py",
    "cgroups.py",
    "containers.py",
    "ctrops.py",
    "devbpf.py",
    "epoch.py",
    "fdpass.py",
    "forker.py",
    "gpus.py",
    "procs.py",
    "hpcbatch_agent.py",
    "hostfacts.py",
    "jobctl.py",
    "loop.py",
    "podman_state.py",
    "protocol.py",
    "purge.py",
    "relay.py",
    "rsh.py",
    "runas.py",
    "srun.py",
    "srun_mpi.py",
    "tools.py",
    "userpaths.py",
    "zygote.py",
)
"""The agent package's files that travel to hosts."""

_STUBS = {
    "hpcbatch/__init__.py": '"""hpcbatch, as much of it as the host agent needs."""\n',
    "hpcbatch/transport/__init__.py": '"""The host-side part of the transport."""\n',
}
_MAIN = "import sys\nfrom hpcbatch.transport.agent.hpcbatch_agent import main\nsys.exit(main())\n"


def archive() -> bytes:
    """The agent as a zipapp; the same bytes for the same sources."""
    package = resources.files("hpcbatch.transport.agent")
    files = dict(_STUBS)
    for name in MODULES:
        files[f"hpcbatch/transport/agent/{name}"] = (package / name).read_text()
    files["__main__.py"] = _MAIN
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(files):
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[path])
    return buf.getvalue()
