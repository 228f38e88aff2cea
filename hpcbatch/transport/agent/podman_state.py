"""Repairing a user's rootless podman state before it fails their jobs.

Rootless podman keeps, per user, a pause process (holding the user namespace)
and a record of each container it runs. When those processes die without
podman seeing it (an OOM kill, a job's cgroup killed with its conmon inside, a
reboot that kept /tmp, an administrator's `pkill -u`), the record still says
"running", and from then on every podman command of that user fails with
`invalid internal status, try resetting the pause process with "podman system
migrate"` until someone runs that command as the user. On a shared cluster
nobody does: each of the user's containerised jobs would fail, one after the
other.

The agent runs podman as the job's user at two points, the `image` check
before every launch and the removal of a killed job's container. Where podman
answers with that hint, it runs `podman system migrate` as the user (which
marks the dead containers stopped and starts a new pause process) and tries
once more. A container whose processes are alive is never touched: the hint
only comes when podman could find none of them.

Standard library only (uploaded with the agent).
"""

from __future__ import annotations

import subprocess
from typing import Any

HINT = "system migrate"
MIGRATE_TIMEOUT_S = 120


def needs_migrate(stderr: str) -> bool:
    """Whether podman's error is its broken-state one (the hint names the repair)."""
    return "invalid internal status" in stderr and HINT in stderr


def migrate(exe: str, run: dict[str, Any]) -> str:
    """`podman system migrate` with `run`'s subprocess arguments (as the user); a line
    for the job's log saying what it did, or why it failed."""
    try:
        done = subprocess.run(
            [exe, "system", "migrate"], stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=MIGRATE_TIMEOUT_S, **run,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return f"podman's state was broken and `podman system migrate` could not run: {exc}"
    stopped = [ln.split()[-1][:12] for ln in done.stdout.splitlines() if ln.startswith("stopped")]
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return f"podman's state was broken and `podman system migrate` failed: {last[:300]}"
    what = f", stopped dead containers {' '.join(stopped)}" if stopped else ""
    return f"repaired podman's state (podman system migrate{what})"


def run_repairing(
    argv: list[str], run: dict[str, Any], timeout: float
) -> tuple[subprocess.CompletedProcess[str], str | None]:
    """Run a podman command (argv[0] is podman's path) with `run`'s arguments; where it
    fails on a broken state, repair it and run it once more. The result, and the repair's
    line (None where none was needed)."""

    def once() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, errors="replace", timeout=timeout, **run,
        )  # fmt: skip

    done = once()
    if done.returncode == 0 or not needs_migrate(done.stderr or ""):
        return done, None
    note = migrate(argv[0], run)
    return once(), note
