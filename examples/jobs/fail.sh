#!/bin/sh
#SBATCH --job-name=fails-with-3
# Exits with code 3: the job ends FAILED with reason "exit code 3".
echo "about to fail" >&2
exit 3
