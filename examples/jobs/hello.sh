#!/bin/sh
#SBATCH --job-name=hello
#SBATCH --cpus-per-task=1
#SBATCH --mem=64M
#SBATCH --time=00:05:00
# A plain job script, written for Slurm, that runs unchanged under hpcbatch.
echo "hello from ${HPCBATCH_SANDBOX_HOST:-$(hostname)}: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST"
echo "CPUs on this node: $SLURM_CPUS_ON_NODE, attempt $HPCBATCH_ATTEMPT"
