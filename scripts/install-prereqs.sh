#!/usr/bin/env bash
# Install the system packages hpcbatch's sandbox, tests and MPI examples need.
# As root: apt-get installs what is missing. Otherwise: print what to install.
set -euo pipefail
need=()
# Container runtimes for tests/integration/test_containers.py (docs/containers.md): podman
# with runc (crun fails on some kernels' cgroup layouts) and catatonit (--init), uidmap
# for rootless podman, Charliecloud's ch-run, bubblewrap, and busybox-static for the test
# images. docker.io (dockerd, started by tests/integration/test_docker_registry.py as
# root) and docker-registry (a local registry the test pushes an image to, then pulls).
# mpich, libmpich-dev: srun of an MPICH program (tests/integration/test_mpi.py); Debian keeps
# OpenMPI the default mpirun/mpicc, MPICH is reached as mpiexec.hydra / mpicc.mpich.
# iptables: tests/integration/test_bastion.py lets only the jump host reach its target.
# postgresql: the PostgreSQL store's tests start a private server (initdb/pg_ctl in a
# temporary directory; tests/postgres_server.py); the package's own cluster is not used.
for pkg in openssh-server openssh-client openmpi-bin libopenmpi-dev tmux python3-venv python3-mpi4py \
    mpich libmpich-dev \
    podman runc catatonit uidmap charliecloud-runtime bubblewrap busybox-static \
    docker.io docker-registry iptables postgresql; do
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
