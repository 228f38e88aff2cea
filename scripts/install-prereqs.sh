#!/usr/bin/env bash
# Install the system packages hpcbatch's sandbox, tests and MPI examples need.
# As root: apt-get installs what is missing. Otherwise: print what to install.
set -euo pipefail
need=()
# Container runtimes for tests/integration/test_containers.py (docs/containers.md): podman
# with runc (crun fails on some kernels' cgroup layouts) and catatonit (--init), uidmap
# for rootless podman, Charliecloud's ch-run, bubblewrap, and busybox-static for the test
# images (no registry is needed).
for pkg in openssh-server openssh-client openmpi-bin libopenmpi-dev tmux python3-venv python3-mpi4py \
    podman runc catatonit uidmap charliecloud-runtime bubblewrap busybox-static; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "hpcbatch needs these Debian packages: ${need[*]}" >&2
  echo "install them with:  sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
