"""Container start overhead per runtime, against the same job without a container.

One run brings up a temporary 4-host sandbox (real sshd on loopback), builds
the busybox test image (tests/integration/images.py: a directory for bwrap
and ch-run, imported into the sandbox user's rootless podman store), and runs
a controller in this process. For each mode (no container, bwrap, ch-run,
podman) it submits `#!/bin/sh\\ntrue` jobs one at a time, all on node1, and
reads, for each:

- *run*: the attempt's `ended - started`, both the shepherd's clock: fork,
  exec of the runtime (or of /bin/sh), the container's set-up and teardown,
  `true`, and for podman its `--rm` removal. This is the container overhead a
  job pays, minus nothing; the bare job's figure is the baseline.
- *STARTING -> RUNNING*: from the allocation to the shepherd's start: includes
  the `image` op (is the image there?) for containerised jobs.
- *submit -> done*: the whole round trip as the client sees it.

Run: `.venv/bin/python benchmarks/containers.py [--runs 20] [--json PATH]`.
As root the sandbox's login user is `hpcbatch`, so podman runs rootless.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcbatch.client import Client
from hpcbatch.controller.app import Controller
from hpcbatch.controller.settings import ControllerSettings
from hpcbatch.sandbox import Sandbox, missing_prerequisites, temporary_sandbox
from tests.integration.images import busybox_rootfs, podman_image

MODES = ("none", "bwrap", "ch-run", "podman")


class Api:
    """The controller's Unix-socket API, called from a thread (the controller shares our loop)."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    async def __call__(self, op: str, **args: Any) -> Any:
        def call() -> Any:
            with Client(self.socket, timeout=300) as client:
                return client.call(op, **args)

        return await asyncio.to_thread(call)


@asynccontextmanager
async def running_controller(inventory: Path, hosts: int) -> AsyncIterator[Api]:
    home = Path(tempfile.mkdtemp(prefix="hb-bench-"))
    settings = ControllerSettings.build(inventory=inventory, home=home, heartbeat_s=5.0)
    c = await Controller.create(settings)
    await c.start()
    try:
        deadline = time.monotonic() + 60
        while sum(h.state == "UP" for h in c.cluster.hosts.values()) < hosts:
            if time.monotonic() > deadline:
                raise SystemExit("hosts did not come up within 60 s")
            await asyncio.sleep(0.05)
        yield Api(settings.socket)
    finally:
        await c.stop()
        shutil.rmtree(home, ignore_errors=True)


def stats(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median": statistics.median(values), "min": min(values),
            "max": max(values)}  # fmt: skip


async def measure(api: Api, mode: str, image: str | None, runs: int) -> dict[str, Any]:
    run, starting, total = [], [], []
    for i in range(runs + 1):  # the first one warms up (and checks the image is there)
        request: dict[str, Any] = {"script": "#!/bin/sh\ntrue\n", "queue": f"bench-{mode}"}
        if image is not None:
            request["image"] = image
        t0 = time.time()
        job_id = (await api("submit", request=request))["job_id"]
        (summary,) = await api("wait", job_ids=[job_id], timeout_s=120)
        t1 = time.time()
        if summary["state"] != "SUCCEEDED":
            raise SystemExit(f"{mode}: job {job_id} ended {summary['state']}: {summary['reason']}")
        show = await api("show", job_id=job_id)
        alloc = next(t["ts"] for t in show["transitions"] if t["new"] == "STARTING")
        (a,) = show["attempts"]
        if i:
            run.append(a["ended"] - a["started"])
            starting.append(a["started"] - alloc)
            total.append(t1 - t0)
    return {"mode": mode, "run_s": stats(run), "starting_s": stats(starting),
            "submit_to_done_s": stats(total)}  # fmt: skip


def per_mode_inventory(sb: Sandbox, where: Path) -> Path:
    """A queue per mode on node1, each pinning its runtime."""
    text = sb.inventory.read_text()
    for mode in MODES:
        runtimes = "" if mode == "none" else f'container_runtimes = ["{mode}"]\n'
        text += (
            f'\n[[compute_environments]]\nname = "bench-{mode}"\nhosts = ["node1"]\n{runtimes}'
            f'\n[[queues]]\nname = "bench-{mode}"\npriority = 1\n'
            f'compute_environments = ["bench-{mode}"]\n'
        )
    path = where / "inventory.toml"
    path.write_text(text)
    return path


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    for runtime in ("bwrap", "ch-run", "podman"):
        if shutil.which(runtime) is None:
            raise SystemExit(f"{runtime} is missing (scripts/install-prereqs.sh installs it)")
    rootfs = str(busybox_rootfs())
    with temporary_sandbox(hosts=1, gpu_hosts=0) as sb, tempfile.TemporaryDirectory() as tmp:
        images = {"none": None, "bwrap": rootfs, "ch-run": rootfs, "podman": podman_image(sb)}
        inventory = per_mode_inventory(sb, Path(tmp))
        async with running_controller(inventory, len(sb.hosts)) as api:
            return [await measure(api, m, images[m], args.runs) for m in MODES]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="jobs per mode")
    parser.add_argument("--json", type=Path, help="save the results here")
    args = parser.parse_args()
    missing = missing_prerequisites()
    if missing:
        print("needs: " + ", ".join(missing), file=sys.stderr)
        return 1
    results = asyncio.run(main_async(args))
    base = results[0]["run_s"]["median"]
    print(f"container start overhead, `true` on one sandbox host, {args.runs} jobs per mode")
    print("(ms, median [min-max]; overhead = run median minus the bare job's)")
    head = f"{'mode':>7}  {'run':>20}  {'overhead':>9}  {'STARTING->RUNNING':>20}"
    head += f"  {'submit->done':>20}"
    print(head)
    for r in results:
        cells = [
            f"{r[k]['median'] * 1000:7.1f} [{r[k]['min'] * 1000:.0f}-{r[k]['max'] * 1000:.0f}]"
            for k in ("run_s", "starting_s", "submit_to_done_s")
        ]
        over = (r["run_s"]["median"] - base) * 1000
        print(f"{r['mode']:>7}  {cells[0]:>20}  {over:9.1f}  {cells[1]:>20}  {cells[2]:>20}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
