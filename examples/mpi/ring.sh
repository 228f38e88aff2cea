#!/bin/sh
#SBATCH --job-name=mpi-ring
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --time=00:05:00
# hpcbatch gives mpirun the hostfile, the launcher (hpcbatch-rsh) and the
# transport settings through the environment: no flags, no passwordless SSH.
# Submit from this directory: hpcbatch submit ring.sh
cd "${SLURM_SUBMIT_DIR:-.}" || exit 1
exec mpirun ${PYTHON:-python3} ring.py
