#!/bin/sh
#SBATCH --job-name=mpi-heat2d
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
#SBATCH --time=00:05:00
# hpcbatch gives mpirun the hostfile, the launcher (hpcbatch-rsh) and the
# transport settings through the environment: no flags, no passwordless SSH.
# Submit from this directory: hpcbatch submit heat2d.sh
cd "${SLURM_SUBMIT_DIR:-.}" || exit 1
exec mpirun ${PYTHON:-python3} heat2d.py
