#!/bin/sh
#SBATCH --job-name=mpi-pi
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --time=00:05:00
# hpcbatch gives mpirun the hostfile, the launcher (hpcbatch-rsh) and the
# transport settings through the environment: no flags, no passwordless SSH.
# Submit from this directory: hpcbatch submit pi.sh
cd "${SLURM_SUBMIT_DIR:-.}" || exit 1
exec mpirun ${PYTHON:-python3} pi.py 400000
