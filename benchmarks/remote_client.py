"""Submitting over a socket forwarded by SSH against the controller's local socket.

One 4-host sandbox (real sshd on loopback) and the controller in its own
process; the client reaches it twice: on its Unix socket directly, and as a
user on another machine does, `hpcbatch --cluster` style through an OpenSSH
ControlMaster forward (`ssh -L local.sock:controller.sock node1`, the sandbox's
login user). The queue is disabled, so every figure is the API's and the
transport's, not a job's run time:

  api submit     one connection, sequential `submit` requests, median ms each
  connect+ping   a new connection and one `ping`, median ms
  cli submit     `hpcbatch submit` as a process (start-up, connect, submit),
                 `--socket` against `--cluster`, median ms
  forward setup  the first `--cluster` command's ssh login and forward, ms (once)

    .venv/bin/python benchmarks/remote_client.py [--submits 500] [--cli-runs 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatch import ControllerProcess, machine_info

from hpcbatch.cli import remote
from hpcbatch.client import Client
from hpcbatch.sandbox import missing_prerequisites, temporary_sandbox

TRUE = {"script": "#!/bin/sh\ntrue\n"}


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def side_by_side(
    local: Callable[[], object], there: Callable[[], object], n: int
) -> tuple[float, float]:
    """Medians (ms) of `local` and `there`, alternated n times (this machine is shared:
    alternating spreads the load's swings over both)."""
    a, b = [], []
    for _ in range(n):
        a.append(timed(local))
        b.append(timed(there))
    return statistics.median(a), statistics.median(b)


def api_submits(local: str, there: str, n: int) -> tuple[float, float]:
    with Client(local) as c, Client(there) as d:
        for _ in range(20):
            c.call("submit", request=TRUE)
            d.call("submit", request=TRUE)
        return side_by_side(
            lambda: c.call("submit", request=TRUE), lambda: d.call("submit", request=TRUE), n
        )


def ping(path: str) -> None:
    with Client(path) as c:
        c.call("ping")


def cli_submit(globals_: list[str], script: Path, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "hpcbatch.cli.main", *globals_, "submit", str(script)],
        check=True,
        capture_output=True,
        env=env,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--submits", type=int, default=500)
    p.add_argument("--cli-runs", type=int, default=20)
    args = p.parse_args(argv)
    if missing_prerequisites():
        print("missing: " + ", ".join(missing_prerequisites()), file=sys.stderr)
        return 2
    runtime = tempfile.mkdtemp(prefix="hbrt-")
    env = {**os.environ, "XDG_RUNTIME_DIR": runtime}
    env.pop("HPCBATCH_SOCKET", None)
    os.environ["XDG_RUNTIME_DIR"] = runtime
    with temporary_sandbox(hosts=4, gpu_hosts=0) as sb:
        ctl = ControllerProcess(sb)
        os.chmod(ctl.home, 0o755)  # the sandbox's login user is the far end of the forward
        ctl.start()
        target = remote.Target("node1", socket=str(ctl.socket), ssh_config=str(sb.ssh_config))
        spec = f"node1:{ctl.socket}"
        try:
            with Client(ctl.socket) as c:
                c.call("queue_update", queue="batch", state="DISABLED")
            t0 = time.perf_counter()
            local, _ = remote.forward(target)
            setup = (time.perf_counter() - t0) * 1000
            script = Path(runtime) / "job.sh"
            script.write_text("#!/bin/sh\ntrue\n")
            # the ssh_config names node1: --cluster goes through the same file.
            env["HPCBATCH_CLUSTERS"] = str(Path(runtime) / "clusters.toml")
            Path(env["HPCBATCH_CLUSTERS"]).write_text(
                f'[clusters.sb]\nhost = "node1"\nssh_config = "{sb.ssh_config}"\n'
                f'socket = "{ctl.socket}"\n'
            )
            here = str(ctl.socket)
            rows = [
                ("api submit (one connection), median", "ms",
                 *api_submits(here, local, args.submits)),
                ("new connection + ping, median", "ms",
                 *side_by_side(lambda: ping(here), lambda: ping(local), 200)),
                ("`hpcbatch submit` process, median", "ms",
                 *side_by_side(lambda: cli_submit(["--socket", here], script, env),
                               lambda: cli_submit(["--cluster", "sb"], script, env),
                               args.cli_runs)),
            ]  # fmt: skip
        finally:
            remote.stop_forward(target)
            ctl.stop()
            ctl.cleanup(keep_log=False)
            shutil.rmtree(runtime, ignore_errors=True)
    info = machine_info()
    print(
        f"machine: {info.get('cpu')} x{os.cpu_count()}, python {info.get('python')}, "
        f"load {os.getloadavg()[0]:.2f}; forward: OpenSSH ControlMaster -L over loopback ({spec})"
    )
    head = f"{'measure':40} {'unit':5} {'local':>8} {'forwarded':>10} {'added':>8}"
    print(head)
    print("-" * len(head))
    for name, unit, a, b in rows:
        print(f"{name:40} {unit:5} {a:8.2f} {b:10.2f} {b - a:8.2f}")
    print(f"{'first --cluster: ssh login + forward':40} {'ms':5} {'':8} {setup:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
