"""The sandbox: real sshd hosts on loopback, checked with the real OpenSSH client and asyncssh.

These tests bring up their own sandboxes on 127.0.0.40 and up, away from the
session `sandbox` fixture (127.0.0.2..5), so both can run in one session.
"""

from __future__ import annotations

import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from hpcbatch import sandbox as sandbox_module
from hpcbatch.models import Inventory
from hpcbatch.sandbox import (
    GPU_NAME,
    Sandbox,
    SandboxError,
    gpu_uuid,
    missing_prerequisites,
    sandbox_down,
    sandbox_status,
    sandbox_up,
    start_host,
    stop_host,
    temporary_sandbox,
)

MISSING = missing_prerequisites()
pytestmark = [
    pytest.mark.sshd,
    pytest.mark.skipif(bool(MISSING), reason="the sandbox needs: " + ", ".join(MISSING)),
]
needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="no OpenSSH client (ssh)")

BASE = 40
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sbx() -> Iterator[Sandbox]:
    with temporary_sandbox(hosts=4, base_address=BASE) as sb:
        yield sb


def ssh(sb: Sandbox, name: str, command: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(sb.ssh_config), *options, name, command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def fields(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


class Session:
    """A long-lived `ssh nodeK` running `sleep`, to see what stopping a host does to it."""

    def __init__(self, sb: Sandbox, name: str) -> None:
        self.proc = subprocess.Popen(
            sb.ssh_argv(name, "echo ready; exec sleep 120"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        assert ready and self.proc.stdout.readline() == b"ready\n"

    def ended_within(self, seconds: float) -> bool:
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def pid_alive(pid: int) -> bool:
    return sandbox_module._alive(pid)


# --------------------------------------------------------------------------- shape and files


def test_no_missing_prerequisites() -> None:
    assert MISSING == []


def test_layout(sbx: Sandbox) -> None:
    assert [h.name for h in sbx.hosts] == ["node1", "node2", "node3", "node4"]
    assert [h.address for h in sbx.hosts] == [f"127.0.0.{BASE + i}" for i in range(4)]
    assert [h.fabric for h in sbx.hosts] == ["island-a", "island-a", "island-b", "island-b"]
    assert [h.gpus for h in sbx.hosts] == [0, 0, 0, 2]
    uid = pwd.getpwnam(sbx.user).pw_uid
    for host in sbx.hosts:
        assert host.pid is not None and pid_alive(host.pid)
        assert host.work_dir == sbx.root / "hosts" / host.name / "work"
        assert host.work_dir.is_dir() and host.work_dir.stat().st_uid == uid
        assert host.bin_dir.is_dir()
    assert (sbx.root / "authorized_keys").stat().st_mode & 0o777 == 0o644
    if os.geteuid() == 0:
        assert sbx.user == sandbox_module.SANDBOX_USER
    else:
        assert sbx.user == pwd.getpwuid(os.getuid()).pw_name


def test_inventory_validates(sbx: Sandbox) -> None:
    text = sbx.inventory.read_text()
    assert text.startswith("#") and "Generated" in text.splitlines()[1]
    inv = Inventory.model_validate(tomllib.loads(text))
    assert inv.defaults.user == sbx.user
    assert inv.defaults.identity == str(sbx.client_key)
    assert inv.defaults.known_hosts == str(sbx.known_hosts)
    assert [(h.name, h.address, h.port, h.work_dir, h.fabric, h.gpus) for h in inv.hosts] == [
        (h.name, h.address, h.port, str(h.work_dir), h.fabric, h.gpus or None) for h in sbx.hosts
    ]
    assert inv.hosts[3].labels == {"sandbox": "yes", "gpu": "yes"}
    assert inv.hosts[0].labels == {"sandbox": "yes"}
    envs = {ce.name: ce for ce in inv.compute_environments}
    assert envs["cpu"].hosts == ["node[1-4]"]
    assert envs["gpu"].selector == {"gpu": "yes"}
    queues = {(q.name, q.priority, tuple(q.compute_environments)) for q in inv.queues}
    assert queues == {("batch", 10, ("cpu",)), ("gpu", 20, ("gpu",))}
    assert inv.default_queue == "batch"


# --------------------------------------------------------------------------- logging in


@needs_ssh
def test_openssh_client_reaches_every_host(sbx: Sandbox) -> None:
    command = (
        'echo "host=$HPCBATCH_SANDBOX_HOST"; echo "smi=$(command -v nvidia-smi)"; '
        'echo "user=$(id -un)"; echo "path=$PATH"'
    )
    for host in sbx.hosts:
        proc = ssh(sbx, host.name, command)
        assert proc.returncode == 0, proc.stderr
        got = fields(proc.stdout)
        assert got["host"] == host.name
        assert got["user"] == sbx.user
        assert got["path"].split(":")[0] == str(host.bin_dir)
        if host.gpus:
            assert got["smi"] == str(host.bin_dir / "nvidia-smi")
        else:
            assert not got["smi"].startswith(str(sbx.root))


@needs_ssh
def test_fake_nvidia_smi(sbx: Sandbox) -> None:
    node4 = sbx.host("node4")
    proc = ssh(
        sbx, "node4", "nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv,noheader"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"{i}, {GPU_NAME}, 81559 MiB, {gpu_uuid('node4', i)}" for i in range(node4.gpus)
    ]
    assert gpu_uuid("node4", 0) != gpu_uuid("node4", 1) != gpu_uuid("node3", 1)
    listing = ssh(sbx, "node4", "nvidia-smi -L").stdout.splitlines()
    assert listing == [f"GPU {i}: {GPU_NAME} (UUID: {gpu_uuid('node4', i)})" for i in range(2)]
    table = ssh(sbx, "node4", "nvidia-smi")
    assert table.returncode == 0 and GPU_NAME in table.stdout and "81559MiB" in table.stdout
    header = ssh(sbx, "node4", "nvidia-smi --query-gpu=index,memory.total --format=csv,nounits")
    assert header.stdout.splitlines() == ["index, memory.total [MiB]", "0, 81559", "1, 81559"]
    bad = ssh(sbx, "node4", "nvidia-smi --query-gpu=bogus --format=csv")
    assert bad.returncode != 0 and "bogus" in bad.stderr


@needs_ssh
def test_host_key_checking_is_on(sbx: Sandbox, tmp_path: Path) -> None:
    node1 = sbx.host("node1")
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True
    )
    other = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[{node1.address}]:{node1.port},{node1.address} {other}\n")
    proc = ssh(sbx, "node1", "true", "-o", f"UserKnownHostsFile={wrong}")
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr
    empty = tmp_path / "empty"
    empty.write_text("")
    proc = ssh(sbx, "node1", "true", "-o", f"UserKnownHostsFile={empty}")
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr


async def test_asyncssh_runs_a_command(sbx: Sandbox) -> None:
    for host in (sbx.host("node1"), sbx.host("node4")):
        async with asyncssh.connect(
            host.address,
            port=host.port,
            username=sbx.user,
            client_keys=[str(sbx.client_key)],
            known_hosts=str(sbx.known_hosts),
        ) as conn:
            result = await conn.run("echo $HPCBATCH_SANDBOX_HOST; id -un", check=True)
        assert result.stdout == f"{host.name}\n{sbx.user}\n"


async def test_asyncssh_uses_the_ssh_config(sbx: Sandbox) -> None:
    async with asyncssh.connect("node2", config=[str(sbx.ssh_config)]) as conn:
        result = await conn.run("echo $HPCBATCH_SANDBOX_HOST", check=True)
    assert result.stdout == "node2\n"


def write_wrong_known_hosts(sbx: Sandbox, tmp_path: Path) -> Path:
    """node2's key listed for node1's address: as if another host answered there."""
    node1, node2 = sbx.host("node1"), sbx.host("node2")
    key = " ".join(Path(f"{node2.host_key}.pub").read_text().split()[:2])
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[{node1.address}]:{node1.port},{node1.address} {key}\n")
    return wrong


async def test_asyncssh_refuses_a_wrong_host_key(sbx: Sandbox, tmp_path: Path) -> None:
    node1 = sbx.host("node1")
    wrong = write_wrong_known_hosts(sbx, tmp_path)
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with asyncssh.connect(
            node1.address,
            port=node1.port,
            username=sbx.user,
            client_keys=[str(sbx.client_key)],
            known_hosts=str(wrong),
        ):
            pass


# --------------------------------------------------------------------------- life cycle


def test_up_is_idempotent(sbx: Sandbox) -> None:
    before = {p: p.read_text() for p in (sbx.known_hosts, sbx.ssh_config, sbx.inventory)}
    again = sandbox_up(sbx.root, hosts=4, base_address=BASE)
    assert [(h.name, h.port, h.pid) for h in again.hosts] == [
        (h.name, h.port, h.pid) for h in sbx.hosts
    ]
    assert {p: p.read_text() for p in before} == before
    status = sandbox_status(sbx.root)
    assert status is not None and status == again


def test_up_restarts_a_dead_host(sbx: Sandbox) -> None:
    node3 = sbx.host("node3")
    assert node3.pid is not None
    old_pid, old_port = node3.pid, node3.port
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(old_pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    status = sandbox_status(sbx.root)
    assert status is not None and status.host("node3").pid is None
    again = sandbox_up(sbx.root, hosts=4, base_address=BASE)
    restarted = again.host("node3")
    assert restarted.pid is not None and restarted.pid != old_pid
    assert restarted.port == old_port
    node3.pid = restarted.pid
    if shutil.which("ssh"):
        assert ssh(sbx, "node3", "echo $HPCBATCH_SANDBOX_HOST").stdout == "node3\n"


def test_up_refuses_another_shape_while_running(sbx: Sandbox) -> None:
    with pytest.raises(SandboxError, match="bring it down first"):
        sandbox_up(sbx.root, hosts=3, base_address=BASE)


@needs_ssh
def test_stop_and_start_host(sbx: Sandbox) -> None:
    node2 = sbx.host("node2")
    port = node2.port
    session = Session(sbx, "node2")
    try:
        stop_host(sbx, "node2")
        assert node2.pid is None
        status = sandbox_status(sbx.root)
        assert status is not None and status.host("node2").pid is None
        refused = ssh(sbx, "node2", "true")
        assert refused.returncode == 255 and "refused" in refused.stderr
        # The connection made before the stop lives on (its own sshd process) ...
        assert not session.ended_within(0.5)
        # ... until the host's whole sshd tree is killed, orphans included.
        stop_host(sbx, "node2", kill_sessions=True)
        assert session.ended_within(10)
    finally:
        session.close()
        start_host(sbx, "node2")
    assert node2.pid is not None and node2.port == port
    assert ssh(sbx, "node2", "echo $HPCBATCH_SANDBOX_HOST").stdout == "node2\n"
    start_host(sbx, "node2")  # already running: nothing to do


@needs_ssh
def test_stop_host_kill_sessions_crashes_the_host(sbx: Sandbox) -> None:
    session = Session(sbx, "node1")
    try:
        stop_host(sbx, "node1", kill_sessions=True)
        assert session.ended_within(10)
        assert ssh(sbx, "node1", "true").returncode == 255
        # Every other host is untouched.
        assert ssh(sbx, "node4", "echo $HPCBATCH_SANDBOX_HOST").stdout == "node4\n"
    finally:
        session.close()
        start_host(sbx, "node1")
    assert ssh(sbx, "node1", "echo $HPCBATCH_SANDBOX_HOST").stdout == "node1\n"


def test_down_stops_everything_and_keeps_files() -> None:
    root = Path(tempfile.mkdtemp(prefix="hpcbatch-sbx-", dir="/tmp"))
    root.chmod(0o755)
    try:
        sb = sandbox_up(root, hosts=2, gpu_hosts=0, base_address=BASE + 10)
        inv = Inventory.model_validate(tomllib.loads(sb.inventory.read_text()))
        assert [q.name for q in inv.queues] == ["batch"]
        assert inv.compute_environments[0].hosts == ["node[1-2]"]
        pids = [h.pid for h in sb.hosts]
        assert all(p is not None for p in pids)
        session = Session(sb, "node2") if shutil.which("ssh") else None
        try:
            sandbox_down(root)
            for pid in pids:
                assert pid is not None and not pid_alive(pid)
            if session is not None:
                assert session.ended_within(10)
        finally:
            if session is not None:
                session.close()
        for host in sb.hosts:
            assert not sandbox_module._accepts(host.address, host.port)
            assert sandbox_module._socket_holders(host.address, host.port) == set()
            assert not host.pid_file.exists()
        status = sandbox_status(root)
        assert status is not None and all(h.pid is None for h in status.hosts)
        assert sb.inventory.exists() and sb.client_key.exists()
        sandbox_down(root)  # again: nothing to do

        # Stale pid files: a dead pid, garbage, and a live process that is not sshd.
        sb.hosts[0].pid_file.write_text("4194303\n")
        sb.hosts[1].pid_file.write_text(f"{os.getpid()}\n")
        sandbox_down(root)
        assert not sb.hosts[0].pid_file.exists() and not sb.hosts[1].pid_file.exists()
        sb.hosts[0].pid_file.write_text("not a pid\n")

        # Up again from the files left behind: same ports when still free.
        again = sandbox_up(root, hosts=2, gpu_hosts=0, base_address=BASE + 10)
        assert all(h.pid is not None for h in again.hosts)
        assert [h.port for h in again.hosts] == [h.port for h in sb.hosts]
    finally:
        sandbox_down(root)
        shutil.rmtree(root, ignore_errors=True)
    assert sandbox_status(root) is None
    sandbox_down(root)  # no such directory: nothing to do


def test_reshape_when_down(tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="hpcbatch-sbx-", dir="/tmp"))
    root.chmod(0o755)
    try:
        sandbox_up(root, hosts=1, gpu_hosts=1, gpus_per_host=1, base_address=BASE + 20)
        sandbox_down(root)
        sb = sandbox_up(root, hosts=2, gpu_hosts=0, base_address=BASE + 20)
        assert [(h.name, h.gpus) for h in sb.hosts] == [("node1", 0), ("node2", 0)]
        assert not (sb.hosts[0].bin_dir / "nvidia-smi").exists()
        assert Inventory.model_validate(tomllib.loads(sb.inventory.read_text()))
    finally:
        sandbox_down(root)
        shutil.rmtree(root, ignore_errors=True)


def test_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="at least one host"):
        sandbox_up(tmp_path, hosts=0)
    with pytest.raises(SandboxError, match="gpu_hosts"):
        sandbox_up(tmp_path, hosts=2, gpu_hosts=3)
    with pytest.raises(SandboxError, match=r"127\.0\.0\.253\.\.256"):
        sandbox_up(tmp_path, hosts=4, base_address=253)
    with pytest.raises(SandboxError, match="plainer path"):
        sandbox_up(tmp_path / "with space")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the sandbox to another user")
def test_root_refuses_an_unreachable_root() -> None:
    closed = Path(tempfile.mkdtemp(prefix="hpcbatch-closed-", dir="/tmp"))  # mode 0700
    try:
        with pytest.raises(SandboxError, match=f"cannot enter {closed} "):
            sandbox_up(closed / "sandbox")
    finally:
        sandbox_down(closed / "sandbox")
        shutil.rmtree(closed, ignore_errors=True)


def test_command_line_status(sbx: Sandbox) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "hpcbatch.sandbox", "status", "--root", str(sbx.root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "node4" in proc.stdout and f"ssh -F {sbx.ssh_config} node1" in proc.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "hpcbatch.sandbox", "status", "--root", str(sbx.root / "none")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert missing.returncode == 1
