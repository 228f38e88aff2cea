"""`srun` inside an hpcbatch job: run a job step's tasks across the allocated nodes.

Slurm job scripts call `srun prog`, `srun -n 4 prog`, `srun --ntasks-per-node=2
prog`. This stand-in is first on every job's PATH so such scripts run
unchanged: it lays the tasks out over the job's nodes as Slurm's block
distribution does, starts the local node's tasks itself and the others through
`hpcbatch-rsh` (the agent's relay), gives each task SLURM_PROCID,
SLURM_LOCALID, SLURM_NODEID and the step's sizes, forwards output (`-l`
prefixes each line with the task number), gives its stdin to task 0 (`-i N`:
task N, `-i all`: every task, `-i none`: none), and exits with the highest
task exit status. SIGINT/SIGTERM stop every task. It starts plain processes: an MPI
program started by it runs as N singletons, so use `mpirun` for MPI.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from hpcbatch.transport.agent import srun_mpi
from hpcbatch.transport.agent.relay import sock_address
from hpcbatch.transport.agent.rsh import STEP_USAGE, step_usage

REPORT_TIMEOUT_S = 2.0

VALUED = {
    "-n": "ntasks", "--ntasks": "ntasks", "-N": "nodes", "--nodes": "nodes",
    "--ntasks-per-node": "per_node", "-c": "cpus", "--cpus-per-task": "cpus", "--mpi": "mpi",
    "--export": None, "-J": None, "--job-name": None, "--gres": None, "--gpus": None,
    "--gpus-per-node": None, "--gpus-per-task": None, "--mem": None, "--mem-per-cpu": None,
    "-t": None, "--time": None, "-p": None, "--partition": None, "--cpu-bind": None,
    "--cpu_bind": None, "-m": None, "--distribution": None, "-w": None, "--nodelist": None,
    "-W": None, "--wait": None, "--hint": None, "-D": None, "--chdir": "chdir",
    "-i": "input", "--input": "input",
}  # fmt: skip
FLAGS = {
    "-l": "label", "--label": "label", "-K": "kill_bad", "--kill-on-bad-exit": "kill_bad",
    "-u": None, "--unbuffered": None, "--exclusive": None, "--overlap": None,
    "-Q": None, "--quiet": None, "-v": None, "--verbose": None, "--whole": None,
}  # fmt: skip


class SrunError(ValueError):
    """An srun invocation that cannot run here."""


@dataclass
class Options:
    ntasks: int | None = None
    nodes: int | None = None
    per_node: int | None = None
    label: bool = False
    kill_bad: bool = False
    chdir: str | None = None
    cpus: int | None = None
    mpi: str | None = None
    input: str = "0"  # who reads srun's stdin: a task number, all or none (srun -i)
    command: list[str] = field(default_factory=list)


def parse_argv(argv: list[str]) -> Options:
    opts = Options()
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if not eq and len(arg) > 2 and arg[1] != "-" and arg[:2] in VALUED:
            name, value, eq = arg[:2], arg[2:], "="  # -n4
        if name in FLAGS:
            if FLAGS[name]:
                setattr(opts, str(FLAGS[name]), True)
            continue
        if name not in VALUED:
            raise SrunError(f"unsupported option {name} (see docs/mpi.md, srun)")
        if not eq:
            if i >= len(argv):
                raise SrunError(f"option {name} needs a value")
            value, i = argv[i], i + 1
        attr = VALUED[name]
        if attr in ("chdir", "mpi"):
            setattr(opts, attr, value)
        elif attr == "input":
            opts.input = value.strip().lower()
            if opts.input not in ("all", "none") and not opts.input.isdigit():
                raise SrunError(f"{name} {value!r}: give a task number, all or none")
        elif attr:
            try:
                number = int(value.split("-")[-1]) if attr == "nodes" else int(value)
            except ValueError:
                raise SrunError(f"{name}: {value!r} is not a number") from None
            if number < 1:
                raise SrunError(f"{name} must be at least 1")
            setattr(opts, attr, number)
    opts.command = argv[i:]
    if not opts.command:
        raise SrunError("name a program to run")
    return opts


def layout(
    job_nodes: int, ntasks: int | None, nodes: int | None, per_node: int | None,
    job_ntasks: int | None,
) -> list[int]:  # fmt: skip
    """Tasks per node (block distribution) for a step of the job's first nodes."""
    if nodes is not None and nodes > job_nodes:
        raise SrunError(f"-N {nodes}: the job has only {job_nodes} nodes")
    want_nodes = nodes or job_nodes
    if ntasks is None:
        ntasks = per_node * want_nodes if per_node else (job_ntasks or want_nodes)
    used = min(want_nodes, ntasks) if nodes is None else want_nodes
    if ntasks < used:
        raise SrunError(f"{ntasks} tasks cannot cover {used} nodes")
    if per_node:
        if ntasks > per_node * used:
            raise SrunError(f"{ntasks} tasks do not fit {per_node} per node on {used} nodes")
        counts, left = [], ntasks
        for _ in range(used):
            counts.append(min(per_node, left))
            left -= counts[-1]
        return [c for c in counts if c] or [0]
    base, extra = divmod(ntasks, used)
    return [base + (1 if i < extra else 0) for i in range(used)]


def check_cpus(counts: list[int], cpus: int, on_node: str | None) -> None:
    """-c N: a node's tasks times N must fit its CPUs (when the job says how many)."""
    if on_node and on_node.isdigit() and max(counts) * cpus > int(on_node):
        raise SrunError(
            f"{max(counts)} tasks x -c {cpus} CPUs need {max(counts) * cpus} CPUs on a node; "
            f"the job has {on_node}"
        )


def mpi_flavour(opts: Options, env: os._Environ[str]) -> str | None:
    """The step's MPI (--mpi, else SLURM_MPI_TYPE, else what the program links), or None."""
    try:
        chosen = srun_mpi.choose(opts.mpi if opts.mpi is not None else env.get("SLURM_MPI_TYPE"))
    except srun_mpi.MpiChoiceError as exc:
        raise SrunError(str(exc)) from None
    if chosen != "":
        return chosen
    return srun_mpi.detect(opts.command, dict(env))


def next_step_id() -> int:
    path = os.path.join(os.environ.get("HPCBATCH_ATTEMPT_DIR") or ".", "srun_steps")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.read(fd, 64).decode() or "0"
        step = int(raw.strip() or 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(step + 1).encode())
        return step
    finally:
        os.close(fd)


def report_step(step: dict[str, object]) -> None:
    """Tell the controller (through this node's agent's relay socket) about a step.

    Best effort: a step runs the same when the report cannot be made.
    """
    name, token = os.environ.get("HPCBATCH_RELAY"), os.environ.get("HPCBATCH_RELAY_TOKEN")
    if not name or not token:
        return
    hello = {"token": token, "attempt": os.environ.get("HPCBATCH_ATTEMPT_ID"), "step": step}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(REPORT_TIMEOUT_S)
            sock.connect(sock_address(name))
            sock.sendall((json.dumps(hello) + "\n").encode())
            sock.recv(4096)  # {"exit": 0}: the agent has sent it on
    except OSError:
        pass


def compress_counts(counts: list[int]) -> str:
    out: list[str] = []
    for c in counts:
        if out and out[-1].split("(")[0] == str(c):
            prev = out[-1]
            n = int(prev[prev.index("x") + 1 : -1]) + 1 if "(x" in prev else 2
            out[-1] = f"{c}(x{n})"
        else:
            out.append(str(c))
    return ",".join(out)


class Step:
    """The running tasks of one srun: their processes and output forwarding."""

    def __init__(self, opts: Options) -> None:
        env = os.environ
        addrs = [a for a in env.get("HPCBATCH_NODE_ADDRS", "").split(",") if a]
        names = [a for a in env.get("HPCBATCH_NODE_NAMES", "").split(",") if a] or addrs
        here = int(env.get("HPCBATCH_NODE_INDEX") or 0)
        job_ntasks = int(env["SLURM_NTASKS"]) if env.get("SLURM_NTASKS") else None
        counts = layout(len(addrs), opts.ntasks, opts.nodes, opts.per_node, job_ntasks)
        self.opts = opts
        self.step = next_step_id()
        # Where each hpcbatch-rsh of this step (ours, an MPI launcher's) leaves what its
        # remote command used on its node: added into the step's usage at its end.
        here_dir = os.environ.get("HPCBATCH_ATTEMPT_DIR") or "."
        self.usage_dir = os.path.join(here_dir, f"srun_usage.{os.getpid()}.{self.step}")
        with contextlib.suppress(OSError):
            os.mkdir(self.usage_dir, 0o700)
            os.environ[STEP_USAGE] = self.usage_dir
        self.procs: list[tuple[int, subprocess.Popen[bytes]]] = []
        self.sel = selectors.DefaultSelector()
        self.flavour: str | None = None
        self.partial: dict[int, bytes] = {}
        ntasks = sum(counts)
        common = {
            "SLURM_STEP_ID": str(self.step), "SLURM_STEPID": str(self.step),
            "SLURM_NTASKS": str(ntasks), "SLURM_NPROCS": str(ntasks),
            "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_STEP_NUM_NODES": str(len(counts)),
            "SLURM_STEP_NODELIST": ",".join(names[: len(counts)]),
            "SLURM_STEP_TASKS_PER_NODE": compress_counts(counts),
        }  # fmt: skip
        report_step({"phase": "start", "step": self.step, "command": shlex.join(opts.command),
                     "ntasks": ntasks, "nodes": len(counts),
                     "node_list": common["SLURM_STEP_NODELIST"]})  # fmt: skip
        if opts.cpus:
            common["SLURM_CPUS_PER_TASK"] = str(opts.cpus)
            common.setdefault("OMP_NUM_THREADS", env.get("OMP_NUM_THREADS") or str(opts.cpus))
            check_cpus(counts, opts.cpus, env.get("SLURM_CPUS_ON_NODE"))
        cwd = opts.chdir or os.getcwd()
        self.flavour = mpi_flavour(opts, env)
        if self.flavour:
            self.start_launcher(addrs[: len(counts)], counts, common, cwd)
            return
        if opts.input.isdigit() and int(opts.input) >= ntasks:
            raise SrunError(f"--input {opts.input}: the step has tasks 0 to {ntasks - 1}")
        rank = 0
        for node, count in enumerate(counts):
            for local in range(count):
                task_env = dict(common, SLURM_PROCID=str(rank), SLURM_LOCALID=str(local),
                                SLURM_NODEID=str(node))  # fmt: skip
                self.start(rank, node == here, addrs[node], task_env, cwd)
                rank += 1
        if opts.input == "all":
            threading.Thread(target=self.broadcast, daemon=True).start()

    def start_launcher(
        self, addrs: list[str], counts: list[int], common: dict[str, str], cwd: str
    ) -> None:
        """An MPI step: the MPI's own launcher starts every rank (srun_mpi.py)."""
        assert self.flavour
        env = srun_mpi.launcher_env(dict(os.environ))
        argv = srun_mpi.launcher_argv(
            self.flavour, addrs, counts, common, self.opts.command, env, self.opts.label
        )
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                cwd=cwd)  # fmt: skip
        self.register(0, proc)

    def start(self, rank: int, local: bool, addr: str, task_env: dict[str, str], cwd: str) -> None:
        mode = self.opts.input
        stdin: int | None = subprocess.DEVNULL  # -i none, and every task but -i N's
        if mode == "all":
            stdin = subprocess.PIPE  # fed by broadcast()
        elif mode.isdigit() and rank == int(mode):
            stdin = None  # srun's own stdin
        if local:
            argv = self.opts.command
            proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env={**os.environ, **task_env},
                                    cwd=cwd)  # fmt: skip
        else:
            assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(task_env.items()))
            remote = f"cd {shlex.quote(cwd)} 2>/dev/null; exec env {assigns} " + shlex.join(
                self.opts.command
            )
            rsh = (
                ["hpcbatch-rsh"] + (["-n"] if stdin == subprocess.DEVNULL else []) + [addr, remote]
            )
            proc = subprocess.Popen(rsh, stdin=stdin, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)  # fmt: skip
        self.register(rank, proc)

    def broadcast(self) -> None:
        """-i all: srun's stdin to every task, until EOF (then theirs closes)."""
        pipes = [p.stdin for _, p in self.procs if p.stdin is not None]
        while pipes:
            data = os.read(0, 65536)
            for pipe in list(pipes):
                try:
                    if data:
                        pipe.write(data)
                        pipe.flush()
                    else:
                        pipe.close()
                except OSError:  # that task is gone, or closed its stdin
                    pipes.remove(pipe)
            if not data:
                return

    def register(self, rank: int, proc: subprocess.Popen[bytes]) -> None:
        self.procs.append((rank, proc))
        for pipe, out in ((proc.stdout, 1), (proc.stderr, 2)):
            assert pipe is not None
            self.sel.register(pipe, selectors.EVENT_READ, (rank, out))

    def forward(self, rank: int, out: int, data: bytes) -> None:
        if self.opts.label:
            key = rank * 2 + out
            data = self.partial.pop(key, b"") + data
            *lines, rest = data.split(b"\n")
            if rest:
                self.partial[key] = rest
            if self.flavour:
                data = b"".join(srun_mpi.relabel(self.flavour, line) + b"\n" for line in lines)
            else:
                data = b"".join(f"{rank}: ".encode() + line + b"\n" for line in lines)
        while data:
            data = data[os.write(out, data) :]

    def wait(self) -> int:
        while self.sel.get_map():
            for key, _ in self.sel.select(timeout=1.0):
                rank, out = key.data
                data = os.read(key.fd, 65536)
                if data:
                    self.forward(rank, out, data)
                else:
                    self.sel.unregister(key.fileobj)
                    rest = self.partial.pop(rank * 2 + out, b"")
                    if rest:
                        self.forward(rank, out, rest + b"\n")
            if self.opts.kill_bad and any(p.poll() not in (None, 0) for _, p in self.procs):
                self.kill()
        worst = 0
        for rank, proc in self.procs:
            rc = proc.wait()
            code = 128 - rc if rc < 0 else rc
            if code:
                who = f"{self.flavour} step" if self.flavour else f"task {rank}"
                sys.stderr.write(f"srun: error: {who}: exited with status {code}\n")
            worst = max(worst, code)
        return worst

    def kill(self, sig: int = signal.SIGTERM) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(sig)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not os.environ.get("HPCBATCH_NODE_ADDRS") or not os.environ.get("HPCBATCH_JOB_ID"):
        sys.stderr.write(
            "srun: not inside an hpcbatch job allocation; "
            "to run a command as a job use `hpcbatch run [options] COMMAND`\n"
        )
        return 1
    try:
        step = Step(parse_argv(args))
    except SrunError as exc:
        sys.stderr.write(f"srun: error: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"srun: error: cannot start the tasks: {exc}\n")
        return 2

    def stop(signum: int, frame: object) -> None:
        step.kill()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = step.wait()
    # The step's usage: srun's children are its tasks here (or the MPI launcher, whose
    # children are the ranks here) and the hpcbatch-rsh clients of the others, which
    # left what their remote commands used on their nodes.
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    remote = step_usage(step.usage_dir)
    peak = max(used.ru_maxrss * 1024, remote["mem_peak_bytes"])  # the largest process
    cpu = {"cpu_user_s": used.ru_utime + remote["cpu_user_s"],
           "cpu_sys_s": used.ru_stime + remote["cpu_sys_s"]}  # fmt: skip
    report_step({"phase": "end", "step": step.step, "exit_code": code, **cpu,
                 "mem_peak_bytes": peak})  # fmt: skip
    return code
