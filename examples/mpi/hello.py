"""MPI hello world: every rank reports its host; rank 0 prints them in order.

Run: mpirun python3 hello.py   (inside an hpcbatch job: no hostfile, no flags)
"""

from __future__ import annotations

import os
import socket

from mpi4py import MPI


def main() -> None:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    # On the sandbox every "host" is this machine: the sandbox names it.
    host = os.environ.get("HPCBATCH_SANDBOX_HOST") or socket.gethostname()
    node = os.environ.get("HPCBATCH_NODE_INDEX", "?")
    everyone = comm.gather((rank, host, node), root=0)
    if rank == 0:
        assert everyone is not None
        for r, h, n in everyone:
            print(f"hello from rank {r} of {size} on {h} (node {n})")
        print(f"hosts: {len({h for _, h, _ in everyone})}")


if __name__ == "__main__":
    main()
