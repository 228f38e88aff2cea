"""`hpcbatch demo` (what `make demo` runs): a sandbox, a controller, real jobs.

Brings up a sandbox of real sshd hosts, starts a controller on its inventory,
submits the example job scripts, waits for them, and prints what happened and
what to try next. It leaves the sandbox and controller running for the tour
(`--stop` stops them at the end; `make demo-down` stops them later).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from hpcbatch.cli.format import table
from hpcbatch.cli.submit import build_submission
from hpcbatch.client import Client, ClientError
from hpcbatch.controller.settings import ControllerSettings, default_home
from hpcbatch.sandbox import (
    SandboxError,
    default_root,
    missing_prerequisites,
    sandbox_down,
    sandbox_up,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "jobs"
MPI_EXAMPLES = EXAMPLES.parent / "mpi"
ARRAY_COMMAND = (
    'echo "array task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT on $HPCBATCH_SANDBOX_HOST"'
)


def _say(text: str) -> None:
    print(f"==> {text}", flush=True)


def _submit(client: Client, argv: list[str], **extra: Any) -> int:
    sub = build_submission(argv, None)
    for w in sub.warnings:
        print(f"    warning: {w}")
    return int(client.call("submit", request={**sub.request, **extra})["job_id"])


def _output(client: Client, job_id: int, stream: str) -> str:
    try:
        return str(client.call("logs", job_id=job_id, stream=stream)["data"])
    except ClientError as exc:
        return f"(output unavailable: {exc.message})"


def run_demo(keep: bool = True, hosts: int = 4) -> int:
    missing = missing_prerequisites()
    if missing:
        print("hpcbatch demo needs: " + ", ".join(missing), file=sys.stderr)
        print(
            "as root, `make demo` installs them; otherwise: "
            "sudo apt-get install openssh-server openmpi-bin libopenmpi-dev python3-mpi4py",
            file=sys.stderr,
        )
        return 1
    home = default_home()
    root = default_root()
    _say(f"starting a sandbox of {hosts} real sshd hosts on loopback ({root})")
    try:
        sb = sandbox_up(root, hosts=hosts)
    except SandboxError as exc:
        print(f"hpcbatch: {exc}", file=sys.stderr)
        return 1
    for h in sb.hosts:
        gpus = f", {h.gpus} fake GPUs" if h.gpus else ""
        print(f"    {h.name}: {h.address}:{h.port} ({h.fabric}{gpus})")
    settings = ControllerSettings.build(inventory=sb.inventory, home=home)
    _say(f"starting the controller (state in {home})")
    from hpcbatch.cli.daemon import controller_running, detach

    pid = controller_running(settings)
    if pid is None:
        if detach(settings, "info") != 0:
            return 1
    else:
        print(f"    a controller is already running (pid {pid})")
    with Client(settings.socket, timeout=120) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            up = [h for h in client.call("hosts") if h["state"] == "UP"]
            if len(up) == len(sb.hosts):
                break
            time.sleep(0.1)
        print(f"    {len(up)}/{len(sb.hosts)} hosts connected")
        _say("submitting example jobs (examples/jobs/*.sh, #SBATCH directives)")
        n_mpi = min(len(sb.hosts), 4)
        jobs = {
            "hello": _submit(client, [str(EXAMPLES / "hello.sh")]),
            "fails with 3": _submit(client, [str(EXAMPLES / "fail.sh")]),
            "GPU job": _submit(client, [str(EXAMPLES / "gpu.sh")]),
            # The hosts' own python3 runs the ranks (Debian's python3-mpi4py).
            f"MPI hello on {n_mpi} hosts (plain mpirun)": _submit(
                client,
                [f"--nodes={n_mpi}", str(MPI_EXAMPLES / "hello.sh")],
                submit_dir=str(MPI_EXAMPLES),
            ),
            "array of 8, at most 4 at once": _submit(
                client, ["--array=0-7%4", "--job-name=array-demo", "--wrap", ARRAY_COMMAND]
            ),
        }
        for what, job_id in jobs.items():
            print(f"    job {job_id}: {what}")
        _say("waiting for them")
        final = client.call("wait", job_ids=list(jobs.values()), timeout_s=120)
        rows = [
            [
                j["id"],
                j["name"],
                j["state"],
                j.get("exit_code"),
                ",".join(j["hosts"]),
                j.get("reason"),
            ]
            for j in final
        ]
        print(table(["JOB", "NAME", "STATE", "EXIT", "HOST", "REASON"], rows))
        for j in final:
            if j.get("array_size"):
                print(f"--- array job {j['id']} ({j['name']}): {j.get('reason')}")
                for child in client.call("jobs", array_parent=j["id"]):
                    out = _output(client, child["id"], "stdout").strip()
                    print(f"    {child['display_id']}: {out}")
                continue
            print(f"--- job {j['id']} ({j['name']}) stdout:")
            print(_output(client, j["id"], "stdout").rstrip() or "(empty)")
            err = _output(client, j["id"], "stderr").rstrip()
            if err:
                print(f"--- job {j['id']} stderr:\n{err}")
    ok = [j["state"] for j in final] == [
        "SUCCEEDED",
        "FAILED",
        "SUCCEEDED",
        "SUCCEEDED",
        "SUCCEEDED",
    ]
    print(f"""
==> done{"" if ok else " (unexpected states: see above)"}.
  Open the dashboard (hosts, jobs, queues, live logs; ? for its keys, q to quit):
    .venv/bin/hpcbatch dash
  Things to try next:
    .venv/bin/hpcbatch hosts                      # sinfo-like: state, CPUs/memory/GPUs, fabric
    .venv/bin/hpcbatch jobs -a                    # squeue-like, with reasons
    .venv/bin/hpcbatch show {jobs["fails with 3"]}                     # history and attempts
    .venv/bin/hpcbatch submit --wrap 'sleep 30; echo done' && .venv/bin/hpcbatch jobs
    .venv/bin/hpcbatch run -p gpu --gpus 2 sh -c 'echo $CUDA_VISIBLE_DEVICES'
    (cd examples/mpi && ../../.venv/bin/hpcbatch submit --wait --nodes=2 pi.sh)  # MPI pi
    .venv/bin/hpcbatch submit --array=0-99%4 --wrap 'echo $SLURM_ARRAY_TASK_ID'
    .venv/bin/hpcbatch jobs                       # the waiting children fold into one row
    .venv/bin/hpcbatch logs -f JOBID
    ssh -F {sb.ssh_config} node1                  # a sandbox host, by hand
  The sandbox and controller keep running. Stop them with:  make demo-down
""")
    if not keep:
        with Client(settings.socket) as client:
            client.call("shutdown")
        sandbox_down(root)
        print("(stopped the controller and the sandbox)")
    return 0 if ok else 1
