"""A simulated cluster: sim-host processes, their keys, known_hosts and an inventory.

Why it exists: the scale benchmark and its test need N SSH hosts that a
controller, started the ordinary way on an ordinary inventory, connects to
with host-key checking on. `SimCluster(root, n)` writes a host key and a
client key, starts `procs` processes of `python -m hpcbatch.transport.sim
serve` (N/procs hosts each: one process cannot handshake thousands of
connections quickly on its own), waits until every host listens, then writes

    <root>/known_hosts     one line per host: [address]:port ssh-ed25519 ...
    <root>/ssh_config      Host 127.77.* with User/IdentityFile/UserKnownHostsFile
    <root>/inventory.toml  [defaults] user, identity, known_hosts, ssh_config,
                           work_dir; one [[hosts]] entry per host

Hosts are named `sim0..sim<N-1>`. `blackhole(names)` silences hosts (no
agent output and no SSH reads, so keepalives go unanswered) and returns when
each went silent; `restore(names)` undoes it; `stats()` adds up the
processes' counters. Use as a context manager: it stops the processes.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import asyncssh

READY_TIMEOUT_S = 120.0


class SimError(RuntimeError):
    """The simulated cluster could not start or answer; the message says why."""


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


class SimProcess:
    """One `serve` process and its JSON-line command channel."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        self.hosts: list[dict[str, Any]] = []

    @property
    def stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    def read_line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(5)
            raise SimError(
                f"sim-host process {self.proc.pid} exited ({self.proc.returncode}): "
                f"{self.log.read_text(errors='replace')[-2000:]}"
            )
        return dict(json.loads(line))

    def send(self, req: dict[str, Any]) -> None:
        self.stdin.write((json.dumps(req) + "\n").encode())
        self.stdin.flush()

    def call(self, req: dict[str, Any]) -> dict[str, Any]:
        self.send(req)
        reply = self.read_line()
        if not reply.get("ok"):
            raise SimError(f"sim-host process {self.proc.pid}: {reply.get('error')}")
        return reply

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"op": "quit"})
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


class SimCluster:
    """N simulated hosts in `procs` processes, with the files a controller needs."""

    def __init__(
        self,
        root: Path,
        hosts: int,
        *,
        procs: int | None = None,
        cpus: int = 8,
        memory_mb: int = 32768,
        gpus: int = 0,
        queue_name: str = "batch",
    ) -> None:
        if hosts < 1:
            raise SimError("a simulated cluster needs at least one host")
        self.root = root.resolve()
        self.n = hosts
        self.n_procs = max(1, min(procs or -(-hosts // 1250), hosts))
        self.cpus, self.memory_mb, self.gpus = cpus, memory_mb, gpus
        self.queue_name = queue_name
        self.host_key = self.root / "host_key"
        self.client_key = self.root / "client_key"
        self.known_hosts = self.root / "known_hosts"
        self.ssh_config = self.root / "ssh_config"
        self.inventory = self.root / "inventory.toml"
        self.work_dir = self.root / "work"
        self.procs: list[SimProcess] = []
        self.hosts: list[dict[str, Any]] = []  # name, address, port
        self._owner: dict[str, SimProcess] = {}

    # ----------------------------------------------------------------- start/stop

    def __enter__(self) -> SimCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(exist_ok=True)
        self._write_keys()
        per = -(-self.n // self.n_procs)
        for i in range(self.n_procs):
            first, count = i * per, min(per, self.n - i * per)
            if count <= 0:
                break
            argv = [
                sys.executable, "-m", "hpcbatch.transport.sim", "serve",
                "--first", str(first), "--count", str(count),
                "--host-key", str(self.host_key), "--client-key", f"{self.client_key}.pub",
                "--cpus", str(self.cpus), "--memory-mb", str(self.memory_mb),
                "--gpus", str(self.gpus),
            ]  # fmt: skip
            self.procs.append(SimProcess(argv, self.root / f"sim{i}.log"))
        deadline = time.monotonic() + READY_TIMEOUT_S
        for proc in self.procs:
            ready = proc.read_line()  # blocks until listening (or the process died)
            if not ready.get("ready"):
                raise SimError(f"sim-host process {proc.proc.pid} said {ready}")
            proc.hosts = list(ready["hosts"])
            self.hosts += proc.hosts
            for h in proc.hosts:
                self._owner[h["name"]] = proc
            if time.monotonic() > deadline:
                raise SimError(f"sim hosts not listening within {READY_TIMEOUT_S:.0f} s")
        self._write_client_files()

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.procs = []

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.procs]

    # ----------------------------------------------------------------- files

    def _write_keys(self) -> None:
        for path in (self.host_key, self.client_key):
            key = asyncssh.generate_private_key("ssh-ed25519")
            key.write_private_key(str(path))
            key.write_public_key(f"{path}.pub")
            os.chmod(path, 0o600)

    def _write_client_files(self) -> None:
        pub = asyncssh.read_public_key(f"{self.host_key}.pub").export_public_key().decode()
        pub = " ".join(pub.split()[:2])
        lines = [f"[{h['address']}]:{h['port']} {pub}\n" for h in self.hosts]
        self.known_hosts.write_text("".join(lines))
        user = getpass.getuser()
        self.ssh_config.write_text(
            "# Simulated hosts (hpcbatch.transport.sim): use `ssh -F <this> -p PORT ADDRESS`\n"
            "Host 127.77.*\n"
            f"    User {user}\n"
            f"    IdentityFile {self.client_key}\n"
            f"    UserKnownHostsFile {self.known_hosts}\n"
            "    StrictHostKeyChecking yes\n"
            "    IdentitiesOnly yes\n"
        )
        out = [
            f"# {self.n} simulated hosts (hpcbatch.transport.sim) under {self.root}",
            f"default_queue = {_toml(self.queue_name)}",
            "",
            "[defaults]",
            f"user = {_toml(user)}",
            f"identity = {_toml(str(self.client_key))}",
            f"known_hosts = {_toml(str(self.known_hosts))}",
            f"ssh_config = {_toml(str(self.ssh_config))}",
            f"work_dir = {_toml(str(self.work_dir))}",
        ]
        for h in self.hosts:
            out += [
                "",
                "[[hosts]]",
                f"name = {_toml(h['name'])}",
                f"address = {_toml(h['address'])}",
                f"port = {h['port']}",
            ]
        out += [
            "",
            "[[compute_environments]]",
            'name = "sim"',
            f'hosts = ["sim[0-{self.n - 1}]"]',
            "",
            "[[queues]]",
            f"name = {_toml(self.queue_name)}",
            'compute_environments = ["sim"]',
            "",
        ]
        self.inventory.write_text("\n".join(out))

    # ----------------------------------------------------------------- control

    def blackhole(self, names: list[str]) -> dict[str, tuple[float, float]]:
        """Silence hosts; returns for each the wall-clock times it went silent and its
        agent last sent a line (heartbeats: the controller heard nothing after that)."""
        out: dict[str, tuple[float, float]] = {}
        for proc, mine in self._by_proc(names):
            for name, (silent, last) in proc.call({"op": "blackhole", "hosts": mine})[
                "silent_since"
            ].items():
                out[name] = (float(silent), float(last))
        return out

    def restore(self, names: list[str]) -> None:
        for proc, mine in self._by_proc(names):
            proc.call({"op": "restore", "hosts": mine})

    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for proc in self.procs:
            reply = proc.call({"op": "stats"})
            for key, value in reply.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    total[key] = total.get(key, 0) + value
        return total

    def _by_proc(self, names: list[str]) -> list[tuple[SimProcess, list[str]]]:
        groups: dict[int, tuple[SimProcess, list[str]]] = {}
        for name in names:
            proc = self._owner.get(name)
            if proc is None:
                raise SimError(f"no simulated host {name!r}")
            groups.setdefault(id(proc), (proc, []))[1].append(name)
        return list(groups.values())
