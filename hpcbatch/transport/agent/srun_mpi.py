"""`srun` of an MPI program: which MPI it uses, and that MPI's own launcher underneath.

Debian's OpenMPI has no Slurm PMI support and MPICH's Hydra is its own process
manager, so srun does not serve PMI itself: for a step whose program is linked
against an MPI (or is a Python program importing mpi4py), it runs that MPI's
launcher (`mpirun.openmpi` or `mpiexec.hydra`) over the step's nodes, with
exactly the step's task counts per node in node order. The launchers reach the
other nodes through `hpcbatch-rsh` (the job's environment already says so), and
every rank starts through a small `sh` wrapper that maps the launcher's rank to
SLURM_PROCID, SLURM_LOCALID and SLURM_NODEID (block layout) and sets the step's
variables. See docs/mpi.md, "srun of MPI programs".
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shlex
import shutil
import subprocess

OPENMPI, MPICH = "openmpi", "mpich"
CHOICES = {
    "none": None, "no": None, "openmpi": OPENMPI, "ompi": OPENMPI, "pmix": OPENMPI,
    "pmix_v3": OPENMPI, "pmix_v4": OPENMPI, "pmix_v5": OPENMPI, "mpich": MPICH,
    "pmi1": MPICH, "pmi2": MPICH, "hydra": MPICH, "mpich2": MPICH,
}  # fmt: skip
# Shared-library names (DT_NEEDED strings) that identify each MPI in an ELF file.
MARKERS = (
    (b"libmpi.so.40", OPENMPI), (b"libopen-rte.so", OPENMPI), (b"libopen-pal.so", OPENMPI),
    (b"libmpich.so", MPICH), (b"libmpi.so.12", MPICH),
)  # fmt: skip
READ_LIMIT = 64 << 20
LAUNCHER_DAEMONS = frozenset({"orted", "prted", "prte", "hydra_pmi_proxy", "pmi_proxy"})
PYTHON = re.compile(r"python[0-9.]*$")


class MpiChoiceError(ValueError):
    """An --mpi value srun does not know."""


def choose(value: str | None) -> str | None:
    """The MPI named by --mpi / SLURM_MPI_TYPE: OPENMPI, MPICH, None (plain); "" = detect."""
    if value is None or value == "":
        return ""
    key = value.strip().lower()
    if key not in CHOICES:
        known = ", ".join(sorted(CHOICES))
        raise MpiChoiceError(f"--mpi={value}: unknown MPI type (one of: {known})")
    return CHOICES[key]


def flavour_of_file(path: str) -> str | None:
    """OPENMPI or MPICH when the ELF file at `path` links that MPI's library."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return None
            data = f.read(READ_LIMIT)
    except OSError:
        return None
    for marker, flavour in MARKERS:
        if marker in data:
            return flavour
    return None


def uses_mpi4py(args: list[str]) -> bool:
    """Whether a Python command line imports mpi4py (in -c code, -m, or its script)."""
    for i, arg in enumerate(args):
        if arg in ("-c", "-m") or "mpi4py" in arg:
            return "mpi4py" in " ".join(args[i : i + 2])
        if not arg.startswith("-") and (i == 0 or args[i - 1] not in ("-W", "-X")):
            try:
                with open(arg, "rb") as f:
                    return b"mpi4py" in f.read(1 << 20)
            except OSError:
                return False
    return False


def mpi4py_flavour(python: str, env: dict[str, str]) -> str | None:
    """The MPI the interpreter's mpi4py is built against (without initialising MPI).

    Asking the interpreter costs a Python start-up, so the answer is kept for the
    attempt (in its directory) for the next steps.
    """
    cache = os.path.join(env.get("HPCBATCH_ATTEMPT_DIR") or "", "srun_mpi4py.json")
    known: dict[str, str | None] = {}
    with contextlib.suppress(OSError, ValueError), open(cache) as f:
        known = dict(json.load(f))
    if python in known:
        return known[python]
    known[python] = _ask_mpi4py(python, env)
    if env.get("HPCBATCH_ATTEMPT_DIR"):
        with contextlib.suppress(OSError):
            with open(cache + ".tmp", "w") as f:
                json.dump(known, f)
            os.replace(cache + ".tmp", cache)
    return known[python]


def _ask_mpi4py(python: str, env: dict[str, str]) -> str | None:
    code = (
        "import importlib.util as u; s = u.find_spec('mpi4py'); "
        "print(list(s.submodule_search_locations)[0] if s else '')"
    )
    try:
        out = subprocess.run(
            [python, "-c", code], env=env, capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    for lib in sorted(glob.glob(os.path.join(out, "MPI*.so"))) if out else []:
        flavour = flavour_of_file(lib)
        if flavour:
            return flavour
    return None


def detect(command: list[str], env: dict[str, str]) -> str | None:
    """The MPI a step's program uses, or None for a plain program.

    An MPI launcher's own daemons (OpenMPI's mpirun starts `orted` with srun
    under a Slurm allocation, as here) are plain: they are what wires ranks up.
    """
    if os.path.basename(command[0]) in LAUNCHER_DAEMONS:
        return None
    path = shutil.which(command[0], path=env.get("PATH"))
    if path is None:
        return None
    if PYTHON.match(os.path.basename(path)):
        return mpi4py_flavour(path, env) if uses_mpi4py(command[1:]) else None
    return flavour_of_file(path)


def task_wrapper(counts: list[int], step_env: dict[str, str]) -> list[str]:
    """`sh -c SCRIPT srun-task`: sets the step's and the rank's Slurm variables, then execs."""
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(step_env.items()))
    script = (
        f"export {assigns}; "
        "r=${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-${PMIX_RANK:-0}}}; n=0; b=0; "
        f"for c in {' '.join(str(c) for c in counts)}; do "
        '[ "$r" -lt $((b + c)) ] && break; b=$((b + c)); n=$((n + 1)); done; '
        "export SLURM_PROCID=$r SLURM_LOCALID=$((r - b)) SLURM_NODEID=$n; "
        'exec "$@"'
    )
    return ["sh", "-c", script, "srun-task"]


def _which(names: tuple[str, ...], env: dict[str, str]) -> str:
    for name in names:
        path = shutil.which(name, path=env.get("PATH"))
        if path:
            return path
    raise FileNotFoundError(f"no MPI launcher found on PATH (looked for {', '.join(names)})")


def launcher_argv(
    flavour: str, addrs: list[str], counts: list[int], step_env: dict[str, str],
    command: list[str], env: dict[str, str], label: bool,
) -> list[str]:  # fmt: skip
    """The launcher command line that starts the step's ranks, block-distributed."""
    ntasks = str(sum(counts))
    hosts = ",".join(f"{a}:{c}" for a, c in zip(addrs, counts, strict=False) if c)
    wrapped = task_wrapper(counts, step_env) + command
    if flavour == OPENMPI:
        mpirun = _which(("mpirun.openmpi", "orterun", "mpirun"), env)
        tag = ["--tag-output"] if label else []
        return [mpirun, "-np", ntasks, "--host", hosts, "--map-by", "slot", *tag, *wrapped]
    hydra = _which(("mpiexec.hydra", "mpiexec.mpich", "mpirun.mpich"), env)
    tag = ["-prepend-rank"] if label else []
    return [hydra, "-n", ntasks, "-hosts", hosts, "-launcher", "rsh",
            "-launcher-exec", "hpcbatch-rsh", "-genvlist", ",".join(passed_env(env)), *tag,
            *wrapped]  # fmt: skip


# What is true of one node only: Hydra must not copy the launching node's values to the others.
NODE_LOCAL = {
    "HPCBATCH_NODE_INDEX", "HPCBATCH_ATTEMPT_ID", "HPCBATCH_ATTEMPT_DIR", "HPCBATCH_RELAY",
    "HPCBATCH_RELAY_TOKEN", "HPCBATCH_SLOTS", "HPCBATCH_GPUS_PER_NODE", "SLURM_NODEID",
    "SLURMD_NODENAME", "SLURM_CPUS_ON_NODE", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
    "AWS_BATCH_JOB_NODE_INDEX", "NODE_RANK", "HOSTNAME", "PWD", "OLDPWD", "SHLVL", "_",
}  # fmt: skip
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")


def passed_env(env: dict[str, str]) -> list[str]:
    """The variables Hydra copies to every rank: all but the node-local ones."""
    return sorted(k for k in env if k not in NODE_LOCAL and NAME.match(k))


def launcher_env(env: dict[str, str]) -> dict[str, str]:
    """The job's environment minus what would make the launcher use the job's layout."""
    drop = ("OMPI_MCA_orte_default_hostfile", "HYDRA_HOST_FILE")
    out = {k: v for k, v in env.items() if k not in drop}
    # OpenMPI would read the Slurm allocation (node names) and refuse the step's hosts.
    out.setdefault("OMPI_MCA_ras", "^slurm")
    out.setdefault("OMPI_MCA_plm", "rsh")
    return out


LABELS = {
    OPENMPI: re.compile(rb"^\[\d+,(\d+)\]<std(?:out|err)>:"),
    MPICH: re.compile(rb"^\[(\d+)\] "),
}


def relabel(flavour: str, line: bytes) -> bytes:
    """A launcher-tagged output line as srun -l prints it: `RANK: text`."""
    m = LABELS[flavour].match(line)
    return m[1] + b": " + line[m.end() :] if m else line
