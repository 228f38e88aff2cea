#!/bin/sh
#SBATCH --job-name=mpi-hello
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --time=00:05:00
# hpcbatch gives mpirun the hostfile, the launcher (hpcbatch-rsh) and the
# transport settings through the environment: no flags, no passwordless SSH.
# Submit from this directory: hpcbatch submit hello.sh
cd "${SLURM_SUBMIT_DIR:-.}" || exit 1
exec mpirun ${PYTHON:-python3} hello.py
