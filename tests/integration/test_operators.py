"""Live administration through the real controller, CLI and sandbox hosts
(docs/operations.md): queues and compute environments created, changed, disabled
and deleted with `hpcbatch queue|ce`, hosts added and removed, the inventory read
again; each change takes effect at the next pass and survives a restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.client import ClientError
from hpcbatch.controller.app import Controller
from hpcbatch.core.states import AdminState, HostState
from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import inventory_with, job_where, short_home, until

pytestmark = pytest.mark.sshd

TAIL = """
[[compute_environments]]
name = "main"
hosts = ["node[1-2]"]

[[queues]]
name = "batch"
compute_environments = ["main"]

[[queues]]
name = "limited"
compute_environments = ["main"]
max_vcpus_per_user = 1
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def store_engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def without_host(text: str, name: str) -> str:
    """The inventory text with host `name`'s [[hosts]] table left out."""
    return re.sub(r'\[\[hosts\]\]\nname = "' + name + r'"\n(?:[^\[].*\n|\n)*', "", text)


async def hpcbatch(c: Controller, *argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HPCBATCH_SOCKET": str(c.settings.socket)}
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hpcbatch.cli.main", *argv],
        capture_output=True,
        text=True,
        env=env,
    )
    assert (out.returncode == 0) == ok, (argv, out.stdout, out.stderr)
    return out


async def listing(c: Controller, what: str) -> dict[str, dict[str, Any]]:
    rows = json.loads((await hpcbatch(c, what, "list", "--json")).stdout)
    return {r["entry"]["name"]: r for r in rows}


async def test_queue_and_ce_changes_take_effect_at_once_and_survive_a_restart(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path
) -> None:
    inv = inventory_with(sandbox, tmp_path, TAIL)
    home = short_home()
    c, api = await controller_factory(inventory=inv, home=home)
    out = await hpcbatch(c, "ce", "create", "side", "--hosts", "node3", "--tag", "team=ml")
    assert out.stdout == "compute environment added: side\n"
    out = await hpcbatch(c, "queue", "create", "fast", "--ce", "side", "--priority", "50")
    assert out.stdout == "queue added: fast\n"
    job = await api.submit(queue="fast")
    (done,) = await api.wait(job)
    assert done["state"] == "SUCCEEDED" and done["hosts"] == ["node3"], done
    # A disabled environment places nothing; enabled again, the waiting job runs.
    await hpcbatch(c, "ce", "disable", "side")
    job = await api.submit(queue="fast")
    await asyncio.sleep(1.0)
    (waiting,) = await api("jobs", ids=[job])
    assert waiting["state"] == "RUNNABLE", waiting
    await hpcbatch(c, "ce", "enable", "side")
    (done,) = await api.wait(job)
    assert done["state"] == "SUCCEEDED", done
    # Changes are checked by the inventory's rules before anything is kept.
    bad = await hpcbatch(c, "queue", "create", "x", "--ce", "nope", ok=False)
    assert 'unknown compute environment "nope"' in bad.stderr, bad.stderr
    bad = await hpcbatch(c, "queue", "update", "fast", "--priority", "5000", ok=False)
    assert 'field "priority"' in bad.stderr, bad.stderr
    await hpcbatch(c, "queue", "update", "fast", "--priority", "60", "--set", "max_running=1")
    out = await hpcbatch(c, "queue", "update", "batch", "--state", "DISABLED", "--reason", "x")
    assert out.stdout == "queue batch: DISABLED\n", out.stdout
    await c.stop()

    c, api = await controller_factory(inventory=inv, home=home)
    queues = await listing(c, "queue")
    assert queues["fast"]["entry"]["priority"] == 60, queues["fast"]
    assert queues["fast"]["source"] == "store" and queues["batch"]["source"] == "file"
    assert (await listing(c, "ce"))["side"]["entry"]["tags"] == {"team": "ml"}
    assert c.cluster.inventory.queues["fast"].max_running == 1
    assert c.cluster.queue_enabled["batch"] is False
    # A queue with active jobs is not deleted; once they are final, it is.
    job = await api.submit(queue="fast", script="#!/bin/sh\nsleep 30\n")
    await job_where(api, job, lambda j: j["state"] == "RUNNING")
    refused = await hpcbatch(c, "queue", "delete", "fast", ok=False)
    assert "queue fast still has 1 active jobs (1 RUNNING)" in refused.stderr, refused.stderr
    await api("cancel", job_ids=[job])
    await api.wait(job)
    assert (await hpcbatch(c, "queue", "delete", "fast")).stdout == "queue removed: fast\n"
    assert (await hpcbatch(c, "ce", "delete", "side")).stdout == (
        "compute environment removed: side\n"
    )
    assert "fast" not in c.cluster.inventory.queues


@pytest.mark.parametrize("store_engine", ["sqlite"])
async def test_hosts_removed_after_draining_added_live_and_the_file_reloaded(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path, store_engine: str
) -> None:
    inv = inventory_with(sandbox, tmp_path, TAIL.replace("node[1-2]", "node[1-3]"))
    inv.write_text(without_host(inv.read_text(), "node4"))
    home = short_home()
    c, api = await controller_factory(inventory=inv, up=3, home=home)
    assert "node4" not in c.cluster.hosts
    # Removing a busy host drains it: its job ends normally, then the host is gone;
    # a removal still waiting is kept across a restart.
    job = await api.submit(script="#!/bin/sh\nsleep 4\n", nodelist="node3")
    await job_where(api, job, lambda j: j["state"] == "RUNNING")
    out = await hpcbatch(c, "hosts", "remove", "node3")
    assert out.stdout == "node3 draining: removed when its jobs end\n"
    assert c.cluster.hosts["node3"].admin == AdminState.DRAIN
    await c.stop()
    c, api = await controller_factory(inventory=inv, up=2, home=home)
    (done,) = await api.wait(job)
    assert done["state"] == "SUCCEEDED"
    await until(lambda: "node3" not in c.cluster.hosts, what="node3 removed")
    assert c.cluster.inventory.compute_environments["main"].hosts == ("node1", "node2")
    # A host added live connects and takes work.
    node4 = sandbox.host("node4")
    await hpcbatch(c, "hosts", "add", "node4", "--address", node4.address,
                   "--port", str(node4.port), "--set", f'work_dir="{node4.work_dir}"',
                   "--ce", "main")  # fmt: skip
    await until(lambda: c.cluster.hosts["node4"].state == HostState.UP, what="node4 up")
    job = await api.submit(nodelist="node4")
    (done,) = await api.wait(job)
    assert done["state"] == "SUCCEEDED" and done["hosts"] == ["node4"], done
    # No change takes a host that runs jobs out of the inventory at once.
    job = await api.submit(nodelist="node4", script="#!/bin/sh\nsleep 30\n")
    await job_where(api, job, lambda j: j["state"] == "RUNNING")
    out = await hpcbatch(c, "ce", "update", "main", "--hosts", "node[1-2]")  # node4 in no CE
    assert out.stdout == "compute environment changed: main\n", out.stdout
    refused = await hpcbatch(c, "hosts", "revert", "node4", ok=False)
    assert "node4 would leave the inventory while running jobs" in refused.stderr, refused
    await api("cancel", job_ids=[job])
    await api.wait(job)
    # Idle, a host added live is reverted: not in the file, it leaves the inventory.
    out = await hpcbatch(c, "hosts", "revert", "node4")
    assert "host removed: node4" in out.stdout, out.stdout
    assert "node4" not in c.cluster.hosts
    # A job bigger than a per-user limit could never start: refused at submit.
    refused = await hpcbatch(c, "submit", "-p", "limited", "-c", "2", "--wrap", "true", ok=False)
    assert "queue limited allows one user at most 1 at once (max_vcpus_per_user = 1)" in (
        refused.stderr
    ), refused.stderr
    # The file read again on request (and on SIGHUP), with what changed.
    inv.write_text(
        inv.read_text() + '\n[[queues]]\nname = "extra"\ncompute_environments = ["main"]\n'
    )
    out = await hpcbatch(c, "reload")
    assert out.stdout == "queue added: extra\n", out.stdout
    inv.write_text(inv.read_text().replace('name = "extra"', 'name = "extra2"'))
    c.reload_soon()
    await until(lambda: "extra2" in c.cluster.inventory.queues, what="SIGHUP's reload")
    assert "extra" not in c.cluster.inventory.queues


@pytest.mark.parametrize("store_engine", ["sqlite"])
async def test_tags_filter_and_the_priority_columns(
    cluster: tuple[Controller, Any], store_engine: str
) -> None:
    c, api = cluster
    await hpcbatch(c, "queue", "create", "fair", "--ce", "cpu", "--policy", "FAIRSHARE",
                   "--share", "a=3", "--state", "DISABLED", "--tag", "owner=ops")  # fmt: skip
    out = await hpcbatch(c, "submit", "--parsable", "-p", "fair", "--share-id", "a",
                         "--tag", "project=x", "--tag", "cost=1,project=y", "--priority", "5",
                         "--wrap", "true")  # fmt: skip
    tagged = int(out.stdout)
    out = await hpcbatch(c, "submit", "--parsable", "-p", "fair", "--wrap", "true")
    plain = int(out.stdout)
    rows = json.loads((await hpcbatch(c, "jobs", "--tag", "project=y", "--json")).stdout)
    assert [r["id"] for r in rows] == [tagged]
    assert rows[0]["tags"] == {"project": "y", "cost": "1"}
    shown = (await hpcbatch(c, "show", str(tagged))).stdout
    assert "  Tags:      cost=1, project=y\n" in shown, shown
    # The priority as the scheduler sees it: queue, job priority and nice, share factor.
    rows = json.loads((await hpcbatch(c, "jobs", "-l", "--json")).stdout)
    by_id = {r["id"]: r for r in rows}
    assert by_id[tagged]["priority"] == 5 and by_id[plain]["priority"] == 0
    assert by_id[tagged]["queue_priority"] == 1 and by_id[tagged]["share_factor"] == 1.0
    text = (await hpcbatch(c, "jobs", "-l")).stdout
    assert text.splitlines()[0].split()[8:12] == ["QPRIO", "PRIO", "NICE", "FAIRSHARE"], text
    line = next(x for x in text.splitlines() if x.split()[0] == str(tagged))
    assert line.split()[8:12] == ["1", "5", "0", "1.000"], line
    # acct filters by tags too (once the jobs ran).
    await hpcbatch(c, "queue", "enable", "fair")
    await api.wait(tagged, plain)
    out = await hpcbatch(c, "acct", "-a", "--tag", "project=y", "-j", f"{tagged},{plain}",
                         "--json")  # fmt: skip
    assert [r["jobid"] for r in json.loads(out.stdout)] == [str(tagged)], out.stdout
    # A definition's tags reach its jobs when it propagates them; the job's own win.
    await api("register", definition={"name": "tagged", "command": ["true"],
              "tags": {"team": "ml", "run": "0"}, "propagate_tags": True})  # fmt: skip
    job = await api.submit(definition="tagged", queue="batch", tags={"run": "7"})
    (done,) = await api.wait(job)
    assert done["tags"] == {"team": "ml", "run": "7"}, done


def test_sighup_reads_the_inventory_file_again(sandbox: Sandbox, tmp_path: Path) -> None:
    """The real controller process: SIGHUP is `hpcbatch reload`, its summary logged."""
    import signal
    import time

    from hpcbatch.client import Client

    inv = inventory_with(sandbox, tmp_path, TAIL)
    home = short_home()
    log = home / "controller.log"
    argv = [sys.executable, "-m", "hpcbatch.cli.main", "--home", str(home), "controller",
            "--inventory", str(inv)]  # fmt: skip
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 30

        def queues() -> set[str]:
            while True:
                try:
                    with Client(home / "controller.sock", timeout=30) as client:
                        return {q["name"] for q in client.call("queues")}
                except ClientError:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.05)

        assert queues() == {"batch", "limited"}
        inv.write_text(
            inv.read_text() + '\n[[queues]]\nname = "hup"\ncompute_environments = ["main"]\n'
        )
        proc.send_signal(signal.SIGHUP)
        while "hup" not in queues() or "queue added: hup" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert proc.poll() is None  # still running: SIGHUP does not stop it
        assert f"SIGHUP: reloaded {inv}: queue added: hup" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)
