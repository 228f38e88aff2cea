#!/bin/sh
#SBATCH --job-name=gpu-check
#SBATCH --partition=gpu
#SBATCH --gres=gpu:1
# Runs on a GPU host; hpcbatch assigns one GPU index and exports it.
echo "on ${HPCBATCH_SANDBOX_HOST:-$(hostname)}: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
nvidia-smi -L
