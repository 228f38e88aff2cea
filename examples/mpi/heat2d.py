"""2-D heat diffusion with halo exchange, checked against the same computation done serially.

An NX x NY plate, hot left edge (1.0), other edges cold (0.0), explicit
five-point stencil for STEPS steps. The rows are split over the ranks; before
each step neighbours swap their boundary rows (the halo). Rank 0 gathers the
result, computes the serial answer itself, and prints both checksums and the
largest difference: the decomposition must not change a single bit.

Run: mpirun python3 heat2d.py [NX NY STEPS]     Serial only: python3 heat2d.py --serial
"""

from __future__ import annotations

import sys

NX, NY, STEPS, ALPHA = 48, 48, 150, 0.2


def initial(rows: range, ny: int) -> list[list[float]]:
    return [[1.0 if j == 0 else 0.0 for j in range(ny)] for _ in rows]


def step(grid: list[list[float]], above: list[float] | None, below: list[float] | None,
         first_row: int, nx: int) -> list[list[float]]:  # fmt: skip
    """One explicit step of the rows in `grid`, given the rows just outside them."""
    ny = len(grid[0])
    out = []
    for i, row in enumerate(grid):
        g = first_row + i
        if g == 0 or g == nx - 1:
            out.append(row[:])  # fixed boundary rows
            continue
        up = grid[i - 1] if i > 0 else above
        down = grid[i + 1] if i + 1 < len(grid) else below
        assert up is not None and down is not None
        new = row[:]
        for j in range(1, ny - 1):
            new[j] = row[j] + ALPHA * (up[j] + down[j] + row[j - 1] + row[j + 1] - 4 * row[j])
        out.append(new)
    return out


def serial(nx: int, ny: int, steps: int) -> list[list[float]]:
    grid = initial(range(nx), ny)
    for _ in range(steps):
        grid = step(grid, None, None, 0, nx)
    return grid


def checksum(grid: list[list[float]]) -> float:
    return sum(sum(row) for row in grid)


def parallel(nx: int, ny: int, steps: int) -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size > nx:
        raise SystemExit(f"{size} ranks for {nx} rows: use fewer ranks")
    lo = rank * nx // size
    hi = (rank + 1) * nx // size
    grid = initial(range(lo, hi), ny)
    up_rank = rank - 1 if rank > 0 else MPI.PROC_NULL
    down_rank = rank + 1 if rank < size - 1 else MPI.PROC_NULL
    for _ in range(steps):
        # Halo exchange: my first row goes up while the row below mine comes up, and so on.
        below = comm.sendrecv(grid[0], dest=up_rank, source=down_rank, sendtag=1, recvtag=1)
        above = comm.sendrecv(grid[-1], dest=down_rank, source=up_rank, sendtag=2, recvtag=2)
        grid = step(grid, above, below, lo, nx)
    parts = comm.gather(grid, root=0)
    if rank != 0:
        return 0
    assert parts is not None
    result = [row for part in parts for row in part]
    reference = serial(nx, ny, steps)
    pairs = zip(result, reference, strict=True)
    diff = max(abs(a - b) for ra, rb in pairs for a, b in zip(ra, rb, strict=True))
    print(f"grid={nx}x{ny} steps={steps} ranks={size}")
    print(f"checksum parallel={checksum(result):.12f} serial={checksum(reference):.12f}")
    print(f"max_abs_diff={diff:.3e}")
    return 0 if diff == 0.0 else 1


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--serial"]
    nx, ny, steps = (int(a) for a in args) if len(args) == 3 else (NX, NY, STEPS)
    if "--serial" in sys.argv:
        print(f"checksum serial={checksum(serial(nx, ny, steps)):.12f}")
        return 0
    return parallel(nx, ny, steps)


if __name__ == "__main__":
    sys.exit(main())
