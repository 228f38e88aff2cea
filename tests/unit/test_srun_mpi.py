"""srun's MPI steps: which MPI a program uses, the rank wrapper, labels, --mpi values."""

from __future__ import annotations

import os
import subprocess

import pytest

from hpcbatch.transport.agent import srun_mpi
from hpcbatch.transport.agent.srun import SrunError, parse_argv


def test_mpi_choices() -> None:
    assert srun_mpi.choose(None) == ""
    assert srun_mpi.choose("pmix") == srun_mpi.OPENMPI
    assert srun_mpi.choose("PMI2") == srun_mpi.MPICH
    assert srun_mpi.choose("none") is None
    with pytest.raises(srun_mpi.MpiChoiceError, match="--mpi=cray_shasta: unknown"):
        srun_mpi.choose("cray_shasta")


def test_srun_reads_mpi_and_cpus() -> None:
    opts = parse_argv(["--mpi=pmix", "-c", "2", "-n4", "prog", "-c", "x"])
    assert (opts.mpi, opts.cpus, opts.ntasks, opts.command) == ("pmix", 2, 4, ["prog", "-c", "x"])
    with pytest.raises(SrunError, match="-c: 'two' is not a number"):
        parse_argv(["-c", "two", "prog"])


def test_python_programs_using_mpi4py() -> None:
    assert srun_mpi.uses_mpi4py(["-c", "from mpi4py import MPI"])
    assert srun_mpi.uses_mpi4py(["-m", "mpi4py", "app.py"])
    assert not srun_mpi.uses_mpi4py(["-c", "print(1)", "mpi4py-looking-arg"])
    assert not srun_mpi.uses_mpi4py(["/nonexistent/app.py"])


def test_detect_plain_and_openmpi_programs() -> None:
    env = dict(os.environ, PATH="/usr/bin:/bin")
    assert srun_mpi.detect(["true"], env) is None
    assert srun_mpi.detect(["python3", "-c", "print(1)"], env) is None
    assert srun_mpi.detect(["python3", "-c", "import mpi4py.MPI"], env) == srun_mpi.OPENMPI
    assert srun_mpi.detect(["/no/such/prog"], env) is None
    # mpirun's daemons, started by OpenMPI's Slurm launcher through srun, stay plain
    assert srun_mpi.detect(["orted", "-mca", "ess", "slurm"], env) is None


def test_rank_wrapper_maps_block_layout() -> None:
    """Rank 4 of counts 3,2,1 is node 1's second task; step variables are set."""
    argv = srun_mpi.task_wrapper([3, 2, 1], {"SLURM_NTASKS": "6"})
    argv += ["sh", "-c", 'echo "$SLURM_PROCID $SLURM_LOCALID $SLURM_NODEID $SLURM_NTASKS"']
    for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        env = {"PATH": "/usr/bin:/bin", var: "4"}
        out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
        assert out == "4 1 1 6\n"


def test_relabel_launcher_tags() -> None:
    assert srun_mpi.relabel(srun_mpi.OPENMPI, b"[1,3]<stdout>:hi") == b"3: hi"
    assert srun_mpi.relabel(srun_mpi.MPICH, b"[2] hi") == b"2: hi"
    assert srun_mpi.relabel(srun_mpi.MPICH, b"plain") == b"plain"


def test_hydra_does_not_copy_node_local_variables() -> None:
    names = srun_mpi.passed_env({"HPCBATCH_NODE_INDEX": "0", "MINE": "1", "BAD-NAME": "x"})
    assert names == ["MINE"]
