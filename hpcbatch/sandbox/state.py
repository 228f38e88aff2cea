"""The state file, `<root>/sandbox.json`: the sandbox's shape and ports.

It lets `down`, `status` and a later `up` find the hosts again, from another
process, and tells whether an existing sandbox has the shape asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

from hpcbatch.sandbox.files import _write
from hpcbatch.sandbox.model import (
    STATE_FILE,
    STATE_VERSION,
    Sandbox,
    SandboxError,
    SandboxHost,
    _make_host,
    _new_sandbox,
    _Params,
)
from hpcbatch.sandbox.processes import _running_pid


def _write_state(sb: Sandbox, params: _Params) -> None:
    state = {
        "version": STATE_VERSION,
        "user": sb.user,
        "params": {
            "hosts": params.hosts,
            "gpu_hosts": params.gpu_hosts,
            "gpus_per_host": params.gpus_per_host,
            "base_address": params.base_address,
            "users": list(params.users),
        },
        "hosts": [
            {
                "name": h.name,
                "address": h.address,
                "port": h.port,
                "gpus": h.gpus,
                "fabric": h.fabric,
            }
            for h in sb.hosts
        ],
    }
    _write(sb.root / STATE_FILE, json.dumps(state, indent=2) + "\n", 0o644)


def _read_state(root: Path) -> dict[str, object] | None:
    try:
        state = json.loads((root / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SandboxError(f"unreadable sandbox state {root / STATE_FILE}: {exc}") from exc
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise SandboxError(f"{root / STATE_FILE} is not a sandbox state this version reads")
    return state


def _state_params(state: dict[str, object]) -> _Params:
    p = state["params"]
    assert isinstance(p, dict)
    users = tuple(str(u) for u in p.get("users", []))
    return _Params(
        int(p["hosts"]), int(p["gpu_hosts"]), int(p["gpus_per_host"]), int(p["base_address"]),
        users,
    )  # fmt: skip


def _read_params(root: Path) -> _Params:
    state = _read_state(root)
    if state is None:
        raise SandboxError(f"no sandbox at {root}")
    return _state_params(state)


def _hosts_from_state(root: Path, state: dict[str, object]) -> list[SandboxHost]:
    entries = state["hosts"]
    assert isinstance(entries, list)
    return [
        _make_host(
            root,
            str(e["name"]),
            str(e["address"]),
            int(e["port"]),
            int(e["gpus"]),
            str(e["fabric"]),
        )
        for e in entries
    ]


def _sandbox_from_state(root: Path, state: dict[str, object]) -> Sandbox:
    hosts = _hosts_from_state(root, state)
    for host in hosts:
        host.pid = _running_pid(host)
    return _new_sandbox(root, str(state["user"]), hosts, _state_params(state).users)
