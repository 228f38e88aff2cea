"""`hpcbatch controller --detach`: start the controller in the background and wait
until it answers, so scripts (and `make demo`) can go on at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from hpcbatch.client import Client, ClientError
from hpcbatch.controller.settings import ControllerSettings

START_TIMEOUT_S = 30.0


def controller_running(settings: ControllerSettings) -> int | None:
    try:
        with Client(settings.socket, timeout=2.0) as client:
            return int(client.call("ping")["pid"])
    except (ClientError, OSError):
        return None


def detach(settings: ControllerSettings, log_level: str) -> int:
    pid = controller_running(settings)
    if pid is not None:
        print(f"a controller is already running (pid {pid}) on {settings.socket}")
        return 0
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = settings.home / "controller.log"
    argv = [
        sys.executable,
        "-m",
        "hpcbatch.cli.main",
        "--home",
        str(settings.home),
        "--socket",
        str(settings.socket),
        "controller",
        "--inventory",
        str(settings.inventory),
        "--heartbeat",
        str(settings.heartbeat_s),
        "--down-after",
        str(settings.down_after_s),
        *(["--link-timeout", str(settings.link_timeout_s)] if settings.link_timeout_s else []),
        *(["--metrics", settings.metrics] if settings.metrics else []),
        "--sync",
        settings.sync.lower(),
        "--store",
        settings.store_url.full(),
        "--log-level",
        log_level,
    ]
    # 0600: a log line may quote a job's request (and its secrets) to the operator.
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    with open(fd, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    (settings.home / "controller.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            print("the controller exited at start:\n  " + "\n  ".join(tail), file=sys.stderr)
            return 1
        if controller_running(settings) == proc.pid:
            print(f"controller running (pid {proc.pid}), socket {settings.socket}, log {log_path}")
            return 0
        time.sleep(0.05)
    print(
        f"the controller did not answer within {START_TIMEOUT_S:.0f}s; see {log_path}",
        file=sys.stderr,
    )
    os.kill(proc.pid, 15)
    return 1
