"""Ring and allreduce check: a token goes round every rank, then an allreduce sums ranks.

Prints `ring: token=<N> expected=<N>` and `allreduce: sum=<S> expected=<S>` on
rank 0 and exits non-zero if either is wrong.
"""

from __future__ import annotations

import sys

from mpi4py import MPI


def main() -> int:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    right, left = (rank + 1) % size, (rank - 1) % size
    # The token starts at 0 on rank 0 and each rank adds 1 as it passes it on.
    if rank == 0:
        comm.send(1, dest=right, tag=7)
        token = comm.recv(source=left, tag=7)
    else:
        token = comm.recv(source=left, tag=7)
        comm.send(token + 1, dest=right, tag=7)
    total = comm.allreduce(rank, op=MPI.SUM)
    expected = size * (size - 1) // 2
    ok = total == expected and (rank != 0 or token == size)
    oks = comm.gather(ok, root=0)
    if rank == 0:
        assert oks is not None
        print(f"ring: token={token} expected={size}")
        print(f"allreduce: sum={total} expected={expected}")
        print("OK" if all(oks) else "FAILED")
        return 0 if all(oks) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
