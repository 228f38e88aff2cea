#!/bin/sh
#SBATCH --job-name=srun-steps
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --time=00:02:00
# A Slurm-style script: srun starts one task per slot, then a 2-task step.
srun -l sh -c 'echo "task $SLURM_PROCID local $SLURM_LOCALID on node $SLURM_NODEID of $SLURM_NNODES"'
srun -n 2 -l hostname
