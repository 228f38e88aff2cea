"""hpcbatch against Slurm, side by side, on this machine, from one command.

Runs `../shared/baselines/slurm_baseline.sh` (a private Slurm 22.05 on loopback,
4 virtual nodes, "default" and "tuned" profiles; about 8 minutes) unless told
to skip it or to reuse its results file, then the same workloads through
hpcbatch on a 4-host sandbox of real sshd hosts with the controller in its own
process, and prints one table: Slurm default, Slurm tuned, hpcbatch on
SQLite and on PostgreSQL, and each one's ratio to Slurm tuned.

    .venv/bin/python benchmarks/vs_slurm.py                 # all, ~12 minutes
    .venv/bin/python benchmarks/vs_slurm.py --slurm skip    # hpcbatch only (says so)
    .venv/bin/python benchmarks/vs_slurm.py --slurm /tmp/slurmbench/results/results.tsv
    .venv/bin/python benchmarks/vs_slurm.py --store sqlite  # the embedded store alone

`--store both` (default: one column each, in one run, so the embedded default
is compared with PostgreSQL under the same load), `sqlite`, or `postgresql` (a
private server from tests/postgres_server.py, default durability, fsync per
commit, on a Unix socket).

The workloads (Slurm's metric key in brackets):
  e2e      500 trivial jobs end to end, jobs/s [b2]: submitted one by one (API, and
           CLI processes), clock stops when the last one is final
  cli      500 sequential CLI submissions into a disabled queue, jobs/s [a1]; and the
           median wall time of one (Slurm's: one sbatch call at a1's rate), beside
           `python -c pass` timed in the same run
  api      the same through the API, one connection, jobs/s (Slurm has no API figure;
           compared with a1)
  array    a 1,000-child array submitted, ms [a2]; and 10,000 children
  cancel   cancel of 500 pending jobs with one command, ms [d4]
  run4     run-and-wait of `true` on 4 nodes, ms [c2 srun -N4 true]
  latency  submit -> SUCCEEDED of `true`, median and p95, ms [c4]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dispatch import ControllerProcess, machine_info, percentile

from hpcbatch.client import Client
from hpcbatch.sandbox import missing_prerequisites, temporary_sandbox

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO.parent / "shared" / "baselines" / "slurm_baseline.sh"
TRUE = "#!/bin/sh\ntrue\n"

# (our row, Slurm metric prefix, unit, higher is better)
ROWS: list[tuple[str, str, str, bool]] = [
    ("500 trivial jobs end to end (API submits)", "b2 ", "jobs/s", True),
    ("500 trivial jobs end to end (CLI submits)", "b2 ", "jobs/s", True),
    ("500 sequential CLI submissions", "a1 ", "jobs/s", True),
    ("`hpcbatch submit` wall time, median", "a1 ", "ms", False),
    ("`python -c pass`, median (floor)", "", "ms", False),
    ("500 sequential API submissions", "a1 ", "jobs/s", True),
    ("500 API submissions, pipelined", "a1 ", "jobs/s", True),
    ("1,000-child array submit (CLI)", "a2 ", "ms", False),
    ("10,000-child array submit (CLI)", "", "ms", False),
    ("cancel 500 pending (one command)", "d4 ", "ms", False),
    ("run-and-wait `true` on 4 nodes (CLI)", "c2 ", "ms", False),
    ("run-and-wait `true` on 4 nodes (API)", "c2 ", "ms", False),
    ("submit -> SUCCEEDED `true`, median", "c4 ", "ms", False),
    ("submit -> SUCCEEDED `true`, p95", "", "ms", False),
]


# Rows whose Slurm figure is a rate (jobs/s) shown as the time of one call (ms).
PER_CALL = {"`hpcbatch submit` wall time, median"}


def run_slurm(mode: str) -> tuple[dict[tuple[str, str], float], str]:
    """Slurm's medians by (profile, metric key), and a note on where they came from."""
    if mode == "skip":
        return {}, "Slurm skipped (--slurm skip): no Slurm column"
    if mode == "run":
        if not BASELINE.exists():
            return {}, f"Slurm skipped: {BASELINE} not found"
        base = Path(os.environ.get("BASE", "/tmp/slurmbench"))
        print(f"running {BASELINE} (about 8 minutes; its log goes to stderr) ...", flush=True)
        proc = subprocess.run(["bash", str(BASELINE)], stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            return {}, f"Slurm skipped: the baseline script failed (exit {proc.returncode})"
        path = base / "results" / "results.tsv"
        note = f"Slurm measured now by {BASELINE.name} ({path})"
    else:
        path = Path(mode)
        note = f"Slurm figures reused from {path}"
    samples: dict[tuple[str, str], list[float]] = {}
    with open(path) as f:
        for row in csv.reader(f, delimiter="\t"):
            if len(row) == 4 and row[3]:
                try:
                    samples.setdefault((row[0], row[1]), []).append(float(row[3]))
                except ValueError:
                    continue
    return {k: statistics.median(v) for k, v in samples.items()}, note


def slurm_value(slurm: dict[tuple[str, str], float], profile: str, prefix: str) -> float | None:
    if not prefix:
        return None
    for (prof, metric), value in slurm.items():
        if prof.removeprefix("slurm-") == profile and metric.startswith(prefix):
            return value
    return None


def cli(home: Path, *args: str) -> tuple[float, str]:
    argv = [str(REPO / ".venv" / "bin" / "hpcbatch"), "--home", str(home), *args]
    if not Path(argv[0]).exists():
        argv = [sys.executable, "-m", "hpcbatch.cli.main", "--home", str(home), *args]
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"hpcbatch {' '.join(args)}: {out.stderr.strip()}")
    return took, out.stdout


def entry_point() -> str:
    """Which `hpcbatch` the CLI rows ran."""
    path = REPO / ".venv" / "bin" / "hpcbatch"
    if not path.exists():
        return f"{sys.executable} -m hpcbatch.cli.main (no {path})"
    first = path.read_text().splitlines()[0]
    kind = "the launcher `make venv` writes" if first.endswith(" -S") else "pip's wrapper"
    return f"{path} ({kind}: {first})"


def e2e(c: Client, n: int) -> float:
    t0 = time.perf_counter()
    ids = [c.call("submit", request={"script": TRUE, "name": "e2e"})["job_id"] for _ in range(n)]
    finals = c.call("wait", job_ids=ids, timeout_s=600)
    took = time.perf_counter() - t0
    assert all(f["state"] == "SUCCEEDED" for f in finals)
    return n / took


def e2e_cli(c: Client, home: Path, n: int) -> float:
    t0 = time.perf_counter()
    ids = [int(cli(home, "submit", "--parsable", "--wrap", "true")[1]) for _ in range(n)]
    finals = c.call("wait", job_ids=ids, timeout_s=600)
    took = time.perf_counter() - t0
    assert all(f["state"] == "SUCCEEDED" for f in finals)
    return n / took


def cli_runs(home: Path, n: int, failures: list[str]) -> list[float]:
    """`n` timings of `hpcbatch run -N 4 true`; a run that fails is noted in `failures` (and
    printed under the table) instead of ending the benchmark, up to `n` failures."""
    took: list[float] = []
    tries = 0
    while len(took) < n and tries < 2 * n:
        tries += 1
        try:
            took.append(cli(home, "run", "-N", "4", "--launch-mode", "all", "true")[0])
        except RuntimeError as exc:
            failures.append(str(exc).splitlines()[0])
    return took


def measure_hpcbatch(
    n: int, latency_runs: int, store: str | None = None, failures: list[str] | None = None
) -> dict[str, float]:
    out: dict[str, float] = {}
    failures = [] if failures is None else failures
    with temporary_sandbox(hosts=4, gpu_hosts=0) as sb:
        ctl = ControllerProcess(sb)
        if store:
            ctl.argv += ["--store", store]
        ctl.start()
        try:
            home = ctl.home
            with ctl.client(timeout=600) as c:
                for _ in range(20):  # warm-up: connections, caches, the agent's first forks
                    c.call("wait", job_ids=[c.call("submit", request={"script": TRUE})["job_id"]])
                lat = []
                for _ in range(latency_runs):
                    t0 = time.perf_counter()
                    job = c.call("submit", request={"script": TRUE, "name": "lat"})["job_id"]
                    c.call("wait", job_ids=[job])
                    lat.append(time.perf_counter() - t0)
                out["submit -> SUCCEEDED `true`, median"] = statistics.median(lat) * 1000
                out["submit -> SUCCEEDED `true`, p95"] = percentile(lat, 95) * 1000
                out["500 trivial jobs end to end (API submits)"] = e2e(c, n)
                out["500 trivial jobs end to end (CLI submits)"] = e2e_cli(c, home, n)
                four = {"script": TRUE, "nodes": 4, "launch_mode": "all"}
                runs = []
                for _ in range(10):
                    t0 = time.perf_counter()
                    c.call("wait", job_ids=[c.call("submit", request=four)["job_id"]])
                    runs.append(time.perf_counter() - t0)
                out["run-and-wait `true` on 4 nodes (API)"] = statistics.median(runs) * 1000
                runs = cli_runs(home, 10, failures)
                if runs:
                    out["run-and-wait `true` on 4 nodes (CLI)"] = statistics.median(runs) * 1000
                c.call("queue_update", queue="batch", state="DISABLED")
                t0 = time.perf_counter()
                for _ in range(n):
                    c.call("submit", request={"script": TRUE, "name": "api"})
                out["500 sequential API submissions"] = n / (time.perf_counter() - t0)
                t0 = time.perf_counter()
                c.pipeline("submit", [{"request": {"script": TRUE, "name": "pipe"}}] * n)
                out["500 API submissions, pipelined"] = n / (time.perf_counter() - t0)
                c.call("cancel", queue="batch")
                t0 = time.perf_counter()
                calls = [cli(home, "submit", "--wrap", "true")[0] for _ in range(n)]
                out["500 sequential CLI submissions"] = n / (time.perf_counter() - t0)
                out["`hpcbatch submit` wall time, median"] = statistics.median(calls) * 1000
                floor = []
                for _ in range(50):
                    t0 = time.perf_counter()
                    subprocess.run([sys.executable, "-c", "pass"], check=True)
                    floor.append(time.perf_counter() - t0)
                out["`python -c pass`, median (floor)"] = statistics.median(floor) * 1000
                took, _ = cli(home, "cancel", "-p", "batch")  # the n just submitted
                out["cancel 500 pending (one command)"] = took * 1000
                for size, row in ((1000, "1,000"), (10_000, "10,000")):
                    took, _ = cli(home, "submit", f"--array=0-{size - 1}", "--wrap", "true")
                    out[f"{row}-child array submit (CLI)"] = took * 1000
                    c.call("cancel", queue="batch")
                c.call("queue_update", queue="batch", state="ENABLED")
        finally:
            ctl.stop()
            ctl.cleanup(keep_log=False)
    return out


def measure_stores(
    which: str, n: int, latency_runs: int, failures: dict[str, list[str]]
) -> dict[str, dict[str, float]]:
    """hpcbatch's figures on each store asked for: SQLite's default file, and/or a new
    database on a private PostgreSQL server; failed `run`s by store in `failures`."""
    out: dict[str, dict[str, float]] = {}
    if which in ("sqlite", "both"):
        out["sqlite"] = measure_hpcbatch(n, latency_runs, None, failures.setdefault("sqlite", []))
    if which in ("postgresql", "both"):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.postgres_server import TemporaryPostgres

        with TemporaryPostgres(durable=True) as pg:
            out["postgresql"] = measure_hpcbatch(
                n,
                latency_runs,
                pg.url(pg.create_database("vs_slurm")),
                failures.setdefault("postgresql", []),
            )
    return out


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if unit != "ms" or value < 100 else f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slurm", default="run", help="run (default), skip, or a results.tsv path")
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--latency-runs", type=int, default=100)
    p.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    args = p.parse_args(argv)
    missing = missing_prerequisites()
    if missing:
        print("missing: " + ", ".join(missing), file=sys.stderr)
        return 2
    slurm, note = run_slurm(args.slurm)
    info = machine_info()
    failures: dict[str, list[str]] = {}
    columns = measure_stores(args.store, args.jobs, args.latency_runs, failures)
    print()
    print(
        f"machine: {info.get('cpu')} x{os.cpu_count()}, python {info.get('python')}, "
        f"load {os.getloadavg()[0]:.2f}; {note}"
    )
    head = f"{'workload':44} {'unit':7} {'Slurm default':>13} {'Slurm tuned':>12} "
    names = {"sqlite": "hpcbatch", "postgresql": "hb PG"} if len(columns) == 1 else {
        "sqlite": "hb SQLite", "postgresql": "hb PG"}  # fmt: skip
    print(head + "".join(f"{names[k]:>10} {'vs tuned':>9}" for k in columns))
    print("-" * (len(head) + 21 * len(columns)))
    for row, prefix, unit, higher in ROWS:
        d = slurm_value(slurm, "default", prefix)
        t = slurm_value(slurm, "tuned", prefix)
        if row in PER_CALL:  # one call at that rate
            d, t = (1000 / d if d else None), (1000 / t if t else None)
        line = f"{row:44} {unit:7} {fmt(d, unit):>13} {fmt(t, unit):>12}"
        for ours in columns.values():
            h = ours.get(row)
            ratio = f"{(h / t if higher else t / h):.1f}x" if t and h else "-"
            line += f" {fmt(h, unit):>10} {ratio:>9}"
        print(line)
    print("(vs tuned: how many times better hpcbatch is; a2/a1/d4 etc. are Slurm's own keys)")
    print(f"CLI rows: {entry_point()}")
    for store, failed in failures.items():
        if failed:
            print(f"{store}: {len(failed)} `run -N 4` failed (not in its median): {failed[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
