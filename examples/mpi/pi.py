"""Monte Carlo pi: each rank samples points in the unit square, a reduce adds the hits.

Deterministic (one seed per rank). Prints `pi=<estimate> error=<e> tolerance=<t>`
and exits 1 when the error is above the tolerance: 6 standard errors of the
estimate, sqrt(pi (4 - pi) / samples), so a correct run fails about once in
500 million.

Run: mpirun python3 pi.py [total samples, default 400000]
"""

from __future__ import annotations

import math
import random
import sys

from mpi4py import MPI


def main() -> int:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 400_000
    mine = total // size + (1 if rank < total % size else 0)
    rng = random.Random(12345 + rank)
    hits = 0
    for _ in range(mine):
        x, y = rng.random(), rng.random()
        if x * x + y * y <= 1.0:
            hits += 1
    all_hits = comm.reduce(hits, op=MPI.SUM, root=0)
    if rank == 0:
        assert all_hits is not None
        estimate = 4.0 * all_hits / total
        error = abs(estimate - math.pi)
        tolerance = 6 * math.sqrt(math.pi * (4 - math.pi) / total)
        print(f"pi={estimate:.6f} error={error:.6f} tolerance={tolerance:.6f} ranks={size}")
        return 0 if error <= tolerance else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
