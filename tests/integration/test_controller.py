"""The controller end to end on real sshd hosts: jobs, refusals, quoting, cancel, logs;
each test on both stores (SQLite, and a database on the session's PostgreSQL server)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.cli.submit import build_submission
from hpcbatch.client import ClientError
from hpcbatch.controller.app import Controller
from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import Api, short_home, until

pytestmark = pytest.mark.sshd


@pytest.fixture(params=["sqlite", "postgresql"])
def store_engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "jobs"


async def test_example_jobs_single_exit3_gpu(cluster: tuple[Controller, Api]) -> None:
    _c, api = cluster
    ids = []
    for name in ("hello.sh", "fail.sh", "gpu.sh"):
        sub = build_submission([str(EXAMPLES / name)], None)
        ids.append((await api("submit", request=sub.request))["job_id"])
    hello, fail, gpu = await api.wait(*ids)
    assert (hello["state"], hello["exit_code"]) == ("SUCCEEDED", 0)
    assert (fail["state"], fail["exit_code"], fail["reason"]) == ("FAILED", 3, "exit code 3")
    assert gpu["state"] == "SUCCEEDED" and gpu["hosts"] == ["node4"]
    out = await api.logs(hello["id"])
    assert f"job {hello['id']} on {hello['hosts'][0]}" in out
    assert "about to fail" in await api.logs(fail["id"], "stderr")
    gpu_out = await api.logs(gpu["id"])
    assert "on node4: CUDA_VISIBLE_DEVICES=" in gpu_out
    visible = gpu_out.split("CUDA_VISIBLE_DEVICES=")[1].split()[0]
    assert visible in ("0", "1")
    # Waiting again on finished jobs reads them back from the store in bulk: same
    # summaries, in the order asked (repeats kept); an unknown id is refused.
    again = await api.wait(gpu["id"], hello["id"], gpu["id"])
    assert [j["id"] for j in again] == [gpu["id"], hello["id"], gpu["id"]]
    assert again[0] == gpu and again[1] == hello
    with pytest.raises(ClientError, match="job 999999 not found"):
        await api.wait(hello["id"], 999999)
    shown = await api("show", job_id=fail["id"])
    assert [t["new"] for t in shown["transitions"]] == [
        "SUBMITTED",
        "RUNNABLE",
        "STARTING",
        "RUNNING",
        "FAILED",
    ]
    assert shown["attempts"][0]["exit_code"] == 3


async def test_two_gpu_jobs_never_share_a_gpu(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    script = "#!/bin/sh\necho $CUDA_VISIBLE_DEVICES; sleep 1\n"
    ids = [await api.submit(script=script, queue="gpu", gpus=1) for _ in range(2)]
    await until(
        lambda: all(c.jobs.live(i) is None or c.jobs.live(i).state == "RUNNING" for i in ids),
        what="both running",
    )
    jobs = await api.wait(*ids)
    outs = {(await api.logs(j["id"])).strip() for j in jobs}
    assert outs == {"0", "1"}
    # a job that asked for no GPU on a GPU host sees none
    plain = await api.submit(script='#!/bin/sh\necho "[$CUDA_VISIBLE_DEVICES]"\n', queue="gpu")
    await api.wait(plain)
    assert (await api.logs(plain)).strip() == "[]"


async def test_refusals_store_nothing(cluster: tuple[Controller, Api]) -> None:
    _c, api = cluster
    before = await api("jobs", all=True)
    with pytest.raises(ClientError) as err:
        await api.submit(queue="nope")
    assert err.value.kind == "bad_request" and "unknown queue 'nope'" in err.value.message
    with pytest.raises(ClientError) as err:
        await api.submit(gpus=8)
    assert err.value.kind == "infeasible" and "8 GPUs" in err.value.message
    with pytest.raises(ClientError) as err:
        await api.submit(cpus=1000)
    assert err.value.kind == "infeasible" and "1000 CPUs" in err.value.message
    with pytest.raises(ClientError) as err:
        await api.submit(memory_mb=10**9)
    assert err.value.kind == "infeasible"
    with pytest.raises(ClientError) as err:
        await api.submit(cpus="many")
    assert err.value.kind == "bad_request" and "cpus" in err.value.message
    with pytest.raises(ClientError) as err:
        await api.submit(colour="blue")
    assert "colour" in err.value.message
    assert await api("jobs", all=True) == before


async def test_hostile_strings_reach_the_job_literally(cluster: tuple[Controller, Api]) -> None:
    _c, api = cluster
    canary = short_home() / "pwned"
    nasty = [
        'it\'s "quoted"',
        f"$(touch {canary})",
        f"`touch {canary}`",
        "two  spaces",
        "new\nline",
        "; rm -rf / ;",
        "*",
        "",
    ]
    script = '#!/bin/sh\nfor a in "$@"; do printf "<%s>\\n" "$a"; done\nprintf "[%s]\\n" "$NASTY"\n'
    name = f"name with 'quotes' and $(touch {canary})"
    job = await api.submit(script=script, args=nasty, env={"NASTY": nasty[1] + nasty[4]}, name=name)
    (final,) = await api.wait(job)
    assert final["state"] == "SUCCEEDED" and final["name"] == name
    out = await api.logs(job)
    expected = "".join(f"<{a}>\n" for a in nasty) + f"[{nasty[1] + nasty[4]}]\n"
    assert out == expected
    assert not canary.exists()


async def test_cancel_pending_and_running(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    marker = f"hbcancel{os.getpid()}"
    # Fill every CPU of the cluster, then one more job waits.
    total = sum(h.cpus or 0 for h in c.cluster.hosts.values())
    script = f"#!/bin/sh\nsleep 300 # {marker}\n"
    running = [await api.submit(script=script) for _ in range(total)]
    waiting = await api.submit(script=script)
    await until(lambda: all(c.jobs.live(i).state == "RUNNING" for i in running), what="all running")
    job = c.jobs.live(waiting)
    await until(lambda: job.reason and job.reason.startswith("Resources"), what="pending reason")
    assert "largest free is 0 CPUs" in (job.reason or "")
    result = await api("cancel", job_ids=[waiting, *running, 999999])
    by_id = {r["job_id"]: r["result"] for r in result}
    assert by_id[waiting] == "cancelled" and by_id[999999] == "not found"
    finals = await api.wait(waiting, *running, timeout=30)
    assert all(j["state"] == "FAILED" for j in finals)
    assert finals[0]["reason"].startswith("cancelled by")
    assert all(j["reason"].startswith("terminated by") for j in finals[1:])
    left = await asyncio.to_thread(
        subprocess.run, ["pgrep", "-f", marker], capture_output=True, text=True
    )
    assert left.stdout.strip() == "", "processes left behind after cancel"
    assert all(not h.holders for h in c.cluster.hosts.values())


async def test_timeout_kills_the_job(cluster: tuple[Controller, Api]) -> None:
    _c, api = cluster
    job = await api.submit(script="#!/bin/sh\necho start\nsleep 60\n", time_limit_s=1)
    (final,) = await api.wait(job, timeout=30)
    assert final["state"] == "FAILED" and final["reason"].startswith("timeout")
    assert await api.logs(job) == "start\n"


async def test_missing_workdir_fails_with_reason(cluster: tuple[Controller, Api]) -> None:
    _c, api = cluster
    job = await api.submit(workdir="/does/not/exist")
    (final,) = await api.wait(job)
    assert final["state"] == "FAILED" and "/does/not/exist" in final["reason"]


async def test_cli_end_to_end(cluster: tuple[Controller, Api], tmp_path: Path) -> None:
    c, api = cluster
    env = {**os.environ, "HPCBATCH_SOCKET": str(c.settings.socket)}
    script = tmp_path / "job.sh"
    script.write_text('#!/bin/sh\n#SBATCH -J from-cli\n#SBATCH --bogus\necho "$1"\n')

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hpcbatch.cli.main", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    out = await asyncio.to_thread(cli, "submit", "--parsable", str(script), "arg one")
    assert out.returncode == 0, out.stderr
    assert "job.sh:3: unknown option --bogus" in out.stderr
    job_id = int(out.stdout)
    await api.wait(job_id)
    listing = json.loads((await asyncio.to_thread(cli, "jobs", "-a", "--json")).stdout)
    mine: dict[str, Any] = next(j for j in listing if j["id"] == job_id)
    assert (mine["name"], mine["state"]) == ("from-cli", "SUCCEEDED")
    assert len(mine["hosts"]) == 1 and mine["hosts"][0].startswith("node")
    assert (await asyncio.to_thread(cli, "logs", str(job_id))).stdout == "arg one\n"
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\n#SBATCH --mem=4Q\ntrue\n")
    res = await asyncio.to_thread(cli, "submit", str(bad))
    assert res.returncode != 0 and "bad.sh:2" in res.stderr and "Traceback" not in res.stderr
    hosts = await asyncio.to_thread(cli, "hosts")
    assert "node4" in hosts.stdout and "island-b" in hosts.stdout
    run = await asyncio.to_thread(
        cli, "run", "-p", "gpu", "--gpus", "2", "sh", "-c", "echo gpus=$CUDA_VISIBLE_DEVICES"
    )
    assert run.returncode == 0 and run.stdout == "gpus=0,1\n"
    run = await asyncio.to_thread(cli, "run", "sh", "-c", "exit 7")
    assert run.returncode == 7


def _sandbox_inventory(sb: Sandbox) -> str:
    return sb.inventory.read_text()


async def test_host_key_mismatch_is_refused(
    sandbox: Sandbox, controller_factory: Any, tmp_path: Path
) -> None:
    wrong = tmp_path / "known_hosts"
    lines = sandbox.known_hosts.read_text().splitlines()
    # node1's entry gets node2's key: a changed host key
    node2_key = next(ln for ln in lines if "127.0.0.3" in ln).split(None, 1)[1]
    fixed = [
        ln.split(None, 1)[0] + " " + node2_key if "127.0.0.2" in ln.split()[0] else ln
        for ln in lines
    ]
    wrong.write_text("\n".join(fixed) + "\n")
    text = _sandbox_inventory(sandbox)
    inv = tmp_path / "inv.toml"
    inv.write_text(text.replace(str(sandbox.known_hosts), str(wrong)))
    c, api = await controller_factory(inventory=inv, up=3)
    node1 = c.cluster.hosts["node1"]
    await until(lambda: node1.reason, what="node1 refused")
    assert node1.state == "UNREACHABLE"
    assert "node1" in node1.reason and str(wrong) in node1.reason and "not trusted" in node1.reason
    job = await api.submit()
    (final,) = await api.wait(job)
    assert final["state"] == "SUCCEEDED" and final["hosts"] != ["node1"]
