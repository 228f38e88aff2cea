"""What a live inventory change costs the controller (issue 16, live administration).

A change (`hpcbatch queue update`, `ce create`, `hosts add`...) lays the stored
changes over the inventory file's data, validates and resolves the result by
the file's own rules, and swaps it into the cluster (`Cluster.replace`). This
times those steps on an inventory of 1,000 hosts in 10 compute environments
and 20 queues, with 50 changes already stored; as the baseline, in the same
run, the start-up load of the same file (`load_inventory`), which the
controller already does once. The validation runs in a thread (the event loop
goes on serving); only the swap holds the loop, so it must stay well under a
scheduling pass (50 ms at 10,000 jobs).

Run: `.venv/bin/python benchmarks/live_admin.py [--hosts 1000] [--stored 50] [--repeat 15]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from schedule_pass import machine

from hpcbatch.controller.cluster import Cluster
from hpcbatch.inventory import load_inventory
from hpcbatch.inventory_edit import Change, load_document, resolve


def inventory_text(hosts: int, envs: int, queues: int) -> str:
    out = ['default_queue = "q0"', "", "[defaults]", 'user = "hpc"']
    for i in range(hosts):
        out += ["", "[[hosts]]", f'name = "n{i:05d}"', f"cpus = {32 + i % 4 * 32}",
                f'labels = {{ rack = "r{i % 40}" }}']  # fmt: skip
    per = hosts // envs
    for e in range(envs):
        lo, hi = e * per, (e + 1) * per - 1
        out += ["", "[[compute_environments]]", f'name = "ce{e}"',
                f'hosts = ["n[{lo:05d}-{hi:05d}]"]']  # fmt: skip
    for q in range(queues):
        out += ["", "[[queues]]", f'name = "q{q}"', f"priority = {q}",
                f'compute_environments = ["ce{q % envs}", "ce{(q + 1) % envs}"]']  # fmt: skip
    return "\n".join(out) + "\n"


def stored_changes(n: int, envs: int) -> list[Change]:
    out: list[Change] = []
    for i in range(n):
        out.append(("queues", f"live{i}", {"name": f"live{i}", "priority": i % 1000,
                    "compute_environments": [f"ce{i % envs}"], "tags": {"n": str(i)}}))  # fmt: skip
    return out


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--envs", type=int, default=10)
    ap.add_argument("--queues", type=int, default=20)
    ap.add_argument("--stored", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=15)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inventory.toml"
        path.write_text(inventory_text(a.hosts, a.envs, a.queues))
        raw = load_document(path)
        stored = stored_changes(a.stored, a.envs)
        change: Change = ("queues", "q3", {"name": "q3", "priority": 999,
                          "compute_environments": ["ce1", "ce0"], "max_running": 10})  # fmt: skip
        start = timed(lambda: load_inventory(path), a.repeat)
        check = timed(lambda: resolve(raw, [*stored, change], path), a.repeat)
        cluster = Cluster(resolve(raw, stored, path))
        before = resolve(raw, stored, path)
        after = resolve(raw, [*stored, change], path)
        flip = [after, before]

        def swap() -> None:
            cluster.replace(flip[0])
            flip.reverse()

        replace = timed(swap, a.repeat)
    print(f"# {machine()}")
    print(f"# {a.hosts} hosts, {a.envs} compute environments, {a.queues} queues in the file, "
          f"{a.stored} changes stored")  # fmt: skip
    print(f"{'step':<52} {'med ms':>8} {'max ms':>8}")
    rows = [
        ("start-up load of the file (baseline)", start),
        ("a change: overlay + validate + resolve", check),
        ("the swap: Cluster.replace", replace),
    ]
    for label, times in rows:
        print(f"{label:<52} {statistics.median(times) * 1e3:>8.1f} {max(times) * 1e3:>8.1f}")
    total = (statistics.median(check) + statistics.median(replace)) * 1e3
    held = statistics.median(replace) * 1e3
    print(f"# a live change takes about {total:.1f} ms (median), of which the event loop "
          f"is held {held:.1f} ms (the swap; the validation runs in a thread)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
