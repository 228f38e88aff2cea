"""Job control and host targeting through the CLI, against the real controller on
the sshd sandbox (issue 20): hold/release/update/requeue, --begin, --deadline,
--priority/--nice ordering, a hold that survives a restart; -w, -x, -C, GPU
types and --fabric choosing the right sandbox hosts, and impossible targets
refused at submit.

The sandbox: node1..node4, islands island-a (node1, node2) and island-b
(node3, node4); node4 has 2 fake H100s (type h100, read from the fake
nvidia-smi's name) and the feature `nvlink`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import Cli, inventory_with, job_where, short_home

pytestmark = pytest.mark.sshd


@pytest.fixture(params=["sqlite", "postgresql"])
def store_engine(request: pytest.FixtureRequest) -> str:
    """Job control on both stores: the hold column, the control write, a restart."""
    return str(request.param)


QUICK = "#!/bin/sh\ntrue\n"
SLEEP = "#!/bin/sh\nsleep 300\n"

PINNED = """
[[compute_environments]]
name = "all"
hosts = ["node[1-4]"]

[[compute_environments]]
name = "n2"
hosts = ["node2"]

[[compute_environments]]
name = "gpu"
selector = { gpu = "yes" }

[[queues]]
name = "batch"
compute_environments = ["all"]

[[queues]]
name = "one"
compute_environments = ["n2"]

[[queues]]
name = "gpu"
compute_environments = ["gpu"]
"""


async def test_targets_choose_the_right_hosts(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path
) -> None:
    c, api = await controller_factory()
    hosts = {h["name"]: h for h in await api("hosts")}
    assert hosts["node4"]["gpu_type"] == "h100" and hosts["node4"]["features"] == ["nvlink"]
    assert hosts["node1"]["gpu_type"] is None
    cli = Cli(c, tmp_path)
    picks = {
        "w": await cli.submit(QUICK, "-w", "node3"),
        "x": await cli.submit(QUICK, "-x", "node[1-3]"),
        "C": await cli.submit(QUICK, "-C", "nvlink"),
        "label": await cli.submit(QUICK, "--constraint=gpu=yes&(nvlink|bigmem)"),
        "gres": await cli.submit(QUICK, "-p", "gpu", "--gres=gpu:h100:1"),
        "gpus": await cli.submit(QUICK, "-p", "gpu", "--gpus=H100:2"),
        "pair": await cli.submit(QUICK, "-N", "2", "-w", "node[1,3]"),
        "fabric": await cli.submit(QUICK, "-N", "2", "--fabric", "island-b"),
        "kind": await cli.submit(QUICK, "-N", "2", "--fabric", "island", "-x", "node3"),
    }
    done = {k: j for k, j in zip(picks, await api.wait(*picks.values()), strict=True)}
    assert all(j["state"] == "SUCCEEDED" for j in done.values()), done
    assert done["w"]["hosts"] == ["node3"]
    assert done["x"]["hosts"] == ["node4"]
    assert done["C"]["hosts"] == ["node4"]
    assert done["label"]["hosts"] == ["node4"]
    assert done["gres"]["hosts"] == ["node4"]
    assert done["gpus"]["hosts"] == ["node4"]
    assert done["pair"]["hosts"] == ["node1", "node3"]
    assert done["fabric"]["hosts"] == ["node3", "node4"]
    assert done["kind"]["hosts"] == ["node1", "node2"]
    # Impossible targets are refused at submit, naming why.
    err = await cli.refused(QUICK, "-p", "gpu", "--gpus=a100:1")
    assert "GPU type a100" in err and "refused" in err, err
    err = await cli.refused(QUICK, "-w", "node9")
    assert "node9" in err and "not in queue batch" in err, err
    err = await cli.refused(QUICK, "-C", "infiniband")
    assert "no host in queue batch matches (constraint infiniband)" in err, err
    err = await cli.refused(QUICK, "-w", "node4", "-x", "node4")
    assert "node4" in err, err
    err = await cli.refused(QUICK, "-N", "2", "--fabric", "ib")
    assert "fabric island of kind ib" in err, err
    err = await cli.refused("#!/bin/sh\n#SBATCH -C nvlink&(ib\ntrue\n")
    assert ":2:" in err and "'(' is not closed" in err, err


async def test_hold_release_update_requeue_and_times(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path
) -> None:
    home = short_home()
    inv = inventory_with(sandbox, tmp_path, PINNED)
    c, api = await controller_factory(inventory=inv, home=home)
    cli = Cli(c, tmp_path)
    # --hold at submit: PENDING, JobHeldUser, until released.
    held = await cli.submit(QUICK, "--hold")
    job = await job_where(api, held, lambda j: j["state"] == "PENDING")
    assert job["reason"].startswith("JobHeldUser:") and job["hold"] == "user"
    # --begin: waits with BeginTime; hold (an administrator's here: the controller's
    # owner) and release keep that; a later update changes its name, limit, priority.
    later = await cli.submit(QUICK, "--begin", "now+1hour", "-J", "later")
    job = await job_where(api, later, lambda j: (j["reason"] or "").startswith("BeginTime:"))
    assert job["state"] == "RUNNABLE"
    out = await cli.run("hold", str(later))
    assert out.returncode == 0 and "held" in out.stdout, out
    job = await job_where(api, later, lambda j: j["state"] == "PENDING")
    assert job["reason"].startswith("JobHeldAdmin:")
    out = await cli.run("update", str(later), "TimeLimit=5", "Name=renamed", "--priority", "7")
    assert out.returncode == 0 and "updated" in out.stdout, out
    shown = await api("show", job_id=later)
    assert shown["name"] == "renamed" and shown["request"]["time_limit_s"] == 300
    assert shown["request"]["priority"] == 7 and shown["state"] == "PENDING"
    out = await cli.run("update", str(later), "Partition=nowhere")
    assert out.returncode != 0 and "unknown queue 'nowhere'" in out.stderr, out
    # A restart keeps the holds.
    await c.stop()
    c, api = await controller_factory(inventory=inv, home=home)
    cli = Cli(c, tmp_path)
    for job_id, who in ((held, "JobHeldUser:"), (later, "JobHeldAdmin:")):
        (job,) = await api("jobs", ids=[job_id])
        assert job["state"] == "PENDING" and job["reason"].startswith(who), job
    array = await cli.submit(QUICK, "--hold", "--array=0-1")
    kids = await api("jobs", array_parent=array)
    assert [k["state"] for k in kids] == ["PENDING", "PENDING"], kids
    assert all(k["reason"].startswith("JobHeldUser:") for k in kids), kids
    out = await cli.run("release", str(held), str(later), str(array))
    assert out.returncode == 0, out
    assert out.stdout.count("released") == 4, out.stdout
    done = await api.wait(held, array)
    assert [d["state"] for d in done] == ["SUCCEEDED", "SUCCEEDED"], done
    job = await job_where(api, later, lambda j: (j["reason"] or "").startswith("BeginTime:"))
    assert job["state"] == "RUNNABLE"
    out = await cli.run("release", str(later))
    assert out.returncode == 1 and "refused: the job is not held" in out.stdout, out
    await api("cancel", job_ids=[later])
    # --begin a few seconds ahead: it starts then, not before.
    t0 = time.time()
    soon = await cli.submit(QUICK, "--begin", "now+3")
    (s,) = await api.wait(soon)
    assert s["state"] == "SUCCEEDED" and s["started"] >= t0 + 2.5, s
    # --deadline it cannot meet with its time limit: FAILED, DeadLine.
    late = await cli.submit(QUICK, "--deadline", "now+60", "-t", "10")
    (d,) = await api.wait(late)
    assert d["state"] == "FAILED" and d["reason"].startswith("DeadLine:"), d
    # Priority and nice order a queue: with node2 busy, three whole-host jobs wait;
    # the higher priority starts first, then the plain one, then the nice one.
    blocker = await cli.submit(SLEEP, "-p", "one", "--exclusive")
    await job_where(api, blocker, lambda j: j["state"] == "RUNNING")
    nice = await cli.submit(QUICK, "-p", "one", "--exclusive", "--nice=50")
    plain = await cli.submit(QUICK, "-p", "one", "--exclusive")
    high = await cli.submit(QUICK, "-p", "one", "--exclusive", "--priority", "5")
    for j in (nice, plain, high):
        await job_where(api, j, lambda x: (x["reason"] or "").startswith("Resources:"))
    # requeue: the running blocker goes back to its queue as a new attempt; the
    # priority-5 job starts before it, then it (attempt 2: as `plain`, priority 0
    # and nice 0, but submitted earlier).
    out = await cli.run("requeue", str(blocker))
    assert out.returncode == 0 and "requeued" in out.stdout, out
    b = await job_where(api, blocker, lambda j: j["state"] == "RUNNING" and j["attempt"] == 2)
    assert b["hosts"] == ["node2"]
    await api("cancel", job_ids=[blocker])
    ran = {j["id"]: j for j in await api.wait(nice, plain, high)}
    assert all(j["state"] == "SUCCEEDED" for j in ran.values()), ran
    order = sorted(ran, key=lambda i: ran[i]["started"])
    assert order == [high, plain, nice], ran
    # --no-requeue: refused; a user's negative nice: refused (here the caller is admin).
    stay = await cli.submit(SLEEP, "--no-requeue")
    await job_where(api, stay, lambda j: j["state"] == "RUNNING")
    out = await cli.run("requeue", str(stay))
    assert out.returncode == 1 and "--no-requeue" in out.stdout, out
    # A running job's time limit reaches its host: raised (by an administrator, as
    # here) from 3 s to 20 s, a 5 s job runs past 3 s and succeeds...
    raised = await cli.submit("#!/bin/sh\nsleep 5\n", "-t", "0:03")
    await job_where(api, raised, lambda j: j["state"] == "RUNNING")
    out = await cli.run("update", str(raised), "--time", "0:20")
    assert out.returncode == 0 and out.stdout.strip().endswith("updated"), out
    (r,) = await api.wait(raised, timeout=30)
    assert r["state"] == "SUCCEEDED" and r["ended"] - r["started"] > 4.5, r
    # ... and lowered, the host ends it at the new one.
    out = await cli.run("update", str(stay), "--time", "0:02")
    assert out.returncode == 0 and out.stdout.strip().endswith("updated"), out
    (st,) = await api.wait(stay, timeout=30)
    assert st["state"] == "FAILED" and "time limit of 0:02" in (st["reason"] or ""), st
    assert st["ended"] - st["started"] < 10, st
    out = await cli.run("update", str(stay), "--time", "5")
    assert out.returncode != 0 and "not waiting or running" in out.stderr, out


async def test_deadlines_end_running_jobs_and_fail_held_ones(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path
) -> None:
    home = short_home()
    c, api = await controller_factory(home=home)
    cli = Cli(c, tmp_path)
    t0 = time.time()
    # Running at its deadline: ended then (no time limit keeps it from starting).
    running = await cli.submit(SLEEP, "--deadline", "now+3")
    # Held (PENDING: never given to a scheduler pass) past the moment it could still
    # have ended by its deadline: failed without waiting for anything else to happen.
    held = await cli.submit(QUICK, "--hold", "--deadline", "now+4", "-t", "0:02")
    # One whose deadline comes after a controller restart: watched again.
    later = await cli.submit(QUICK, "--hold", "--deadline", "now+7")
    await job_where(api, running, lambda j: j["state"] == "RUNNING")
    r, h = await api.wait(running, held, timeout=30)
    assert r["state"] == "FAILED" and r["reason"].startswith("DeadLine: still running"), r
    assert t0 + 2.5 < r["ended"] < t0 + 15, r
    assert h["state"] == "FAILED" and h["reason"].startswith("DeadLine: it could not end"), h
    assert h["started"] is None and t0 + 1.5 < h["ended"] < t0 + 10, h
    await c.stop()
    c, api = await controller_factory(home=home)
    (lt,) = await api.wait(later, timeout=30)
    assert lt["state"] == "FAILED" and lt["reason"].startswith("DeadLine:"), lt
    assert lt["ended"] > t0 + 6.5, lt


async def test_requeue_finished_jobs_and_requeue_hold(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path
) -> None:
    c, api = await controller_factory()
    cli = Cli(c, tmp_path)
    flaky = await cli.submit(
        '#!/bin/sh\necho "run $SLURM_RESTART_COUNT"\nexit $((1 - SLURM_RESTART_COUNT))\n'
    )
    ok = await cli.submit(QUICK)
    f, o = await api.wait(flaky, ok)
    assert f["state"] == "FAILED" and o["state"] == "SUCCEEDED", (f, o)
    # A failed job requeued: the same id, a second attempt, its history kept.
    out = await cli.run("requeue", str(flaky))
    assert out.returncode == 0 and f"job {flaky}: requeued" in out.stdout, out
    (f,) = await api.wait(flaky)
    assert f["state"] == "SUCCEEDED" and f["attempt"] == 2 and f["exit_code"] == 0, f
    shown = await api("show", job_id=flaky)
    assert [(a["attempt"], a["exit_code"]) for a in shown["attempts"]] == [(1, 1), (2, 0)]
    moves = [(t["old"], t["new"]) for t in shown["transitions"]]
    assert moves.count(("RUNNING", "FAILED")) == 1 and ("FAILED", "RUNNABLE") in moves, moves
    assert moves[-1] == ("RUNNING", "SUCCEEDED"), moves
    logs = await cli.run("logs", str(flaky))
    assert "run 1" in logs.stdout, logs  # the new attempt's SLURM_RESTART_COUNT
    # requeue --hold (scontrol requeuehold) of a finished job: back, held, until released.
    out = await cli.run("requeue", "--hold", str(ok))
    assert out.returncode == 0 and "requeued and held" in out.stdout, out
    held = await job_where(api, ok, lambda j: j["state"] == "PENDING")
    # (this test's caller owns the controller: an administrator, so an admin hold)
    assert held["reason"].startswith("JobHeldAdmin:") and held["ended"] is None, held
    assert (await cli.run("release", str(ok))).returncode == 0
    (o,) = await api.wait(ok)
    assert o["state"] == "SUCCEEDED" and o["attempt"] == 2, o
    # ... and of a running one: its attempt ends, it waits held, never started meanwhile.
    running = await cli.submit(SLEEP)
    await job_where(api, running, lambda j: j["state"] == "RUNNING")
    out = await cli.run("requeue", "--hold", str(running))
    assert out.returncode == 0 and "requeued and held" in out.stdout, out
    held = await job_where(api, running, lambda j: j["state"] == "PENDING")
    assert held["reason"].startswith("JobHeldAdmin:") and held["attempt"] == 1, held
    shown = await api("show", job_id=running)
    assert [a["state"] for a in shown["attempts"]] == ["LOST"], shown["attempts"]
    await api("cancel", job_ids=[running])
    # Refusals: --no-requeue, an unknown job.
    stay = await cli.submit(QUICK, "--no-requeue")
    await api.wait(stay)
    out = await cli.run("requeue", str(stay))
    assert out.returncode == 1 and "refused: submitted with --no-requeue" in out.stdout, out
    out = await cli.run("requeue", "999999")
    assert out.returncode != 0 and "job 999999 not found" in out.stderr, out


async def test_requeue_a_task_of_a_finished_array_and_of_a_running_one(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path
) -> None:
    """`requeue 12_1` of a finished array's task, as Slurm's: the task runs again as a
    new attempt, and the array's summary counts it again; an array that had ended is
    live again until its task ends, then final with the right counts."""
    c, api = await controller_factory()
    cli = Cli(c, tmp_path)
    flaky_task = (
        "#!/bin/sh\n"
        'if [ "$SLURM_ARRAY_TASK_ID" = 1 ] && [ "$SLURM_RESTART_COUNT" = 0 ]; then exit 3; fi\n'
        'echo "task $SLURM_ARRAY_TASK_ID run $SLURM_RESTART_COUNT"\n'
    )
    array = await cli.submit(flaky_task, "--array=0-2")
    (parent,) = await api.wait(array)
    assert parent["state"] == "FAILED" and "1 FAILED" in parent["reason"], parent
    out = await cli.run("requeue", f"{array}_1")
    assert out.returncode == 0 and f"{array}_1: requeued" in out.stdout, out
    kids = {k["array_index"]: k for k in await api("jobs", array_parent=array, all=True)}
    (task,) = await api.wait(kids[1]["id"])
    assert task["state"] == "SUCCEEDED" and task["attempt"] == 2, task
    (parent,) = await api.wait(array)
    assert parent["state"] == "SUCCEEDED" and parent["reason"] == "3 SUCCEEDED", parent
    moves = [(t["old"], t["new"]) for t in (await api("show", job_id=array))["transitions"]]
    assert ("FAILED", "RUNNABLE") in moves and moves[-1][1] == "SUCCEEDED", moves
    logs = await cli.run("logs", str(kids[1]["id"]))
    assert "task 1 run 1" in logs.stdout, logs
    # A finished task of an array still running: counted out of SUCCEEDED, and in again.
    slow = await cli.submit(
        '#!/bin/sh\n[ "$SLURM_ARRAY_TASK_ID" = 1 ] && sleep 30\ntrue\n', "--array=0-1"
    )
    kids = {k["array_index"]: k for k in await api("jobs", array_parent=slow, all=True)}
    await job_where(api, kids[0]["id"], lambda j: j["state"] == "SUCCEEDED")
    await job_where(api, kids[1]["id"], lambda j: j["state"] == "RUNNING")
    out = await cli.run("requeue", "--hold", f"{slow}_0")
    assert out.returncode == 0 and "requeued and held" in out.stdout, out
    summary = await job_where(api, slow, lambda j: "1 PENDING" in (j["reason"] or ""))
    assert "SUCCEEDED" not in summary["reason"], summary  # 1 RUNNING, 1 PENDING
    await api("cancel", job_ids=[str(slow)])
    # A whole finished array is not requeued at once.
    out = await cli.run("requeue", str(array))
    assert out.returncode == 1 and "requeued task by task" in out.stdout, out
    # A task that may not be requeued: refused, and its ended array stays ended.
    stay = await cli.submit(QUICK, "--array=0-1", "--no-requeue")
    await api.wait(stay)
    out = await cli.run("requeue", f"{stay}_0")
    assert out.returncode == 1 and "refused: submitted with --no-requeue" in out.stdout, out
    ended = await job_where(api, stay, lambda j: j["state"] == "SUCCEEDED")
    assert ended["reason"] == "2 SUCCEEDED" and ended["ended"] is not None, ended
    moves = [(t["old"], t["new"]) for t in (await api("show", job_id=stay))["transitions"]]
    assert not any(new == "RUNNABLE" for old, new in moves if old == "SUCCEEDED"), moves


async def test_update_an_arrays_throttle(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path
) -> None:
    c, api = await controller_factory()
    cli = Cli(c, tmp_path)
    array = await cli.submit(SLEEP, "--array=0-3%1")
    kids = await api("jobs", array_parent=array)

    async def running() -> int:
        return sum(k["state"] == "RUNNING" for k in await api("jobs", array_parent=array))

    await job_where(api, kids[0]["id"], lambda j: j["state"] == "RUNNING")
    await job_where(api, kids[1]["id"], lambda j: (j["reason"] or "").startswith("Throttle:"))
    try:
        out = await cli.run("update", str(array), "ArrayTaskThrottle=3")
        assert out.returncode == 0 and "updated" in out.stdout, out
        for k in kids[:3]:
            await job_where(api, k["id"], lambda j: j["state"] == "RUNNING")
        assert await running() == 3
        last = await job_where(api, kids[3]["id"], lambda j: "at most 3" in (j["reason"] or ""))
        assert last["state"] == "RUNNABLE"
        out = await cli.run("update", f"{array}_3", "--array-throttle", "0")
        assert out.returncode != 0 and "not a live array" in out.stderr, out
    finally:
        await api("cancel", job_ids=[array])
