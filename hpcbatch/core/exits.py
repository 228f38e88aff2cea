"""What an attempt's end means: its job state and the reason shown to users.

Pure: the agent's exit record (code, signal, timed out, a reason it gave)
becomes SUCCEEDED only for exit code 0 with nothing else said; everything
else is FAILED with the words `show` and `jobs` print (`exit code 3`,
`killed by SIGKILL`, `timeout: exceeded its time limit of 1:00`, ...).
"""

from __future__ import annotations

import signal
from typing import Any

from hpcbatch.core.states import JobState
from hpcbatch.core.units import format_duration


def exit_reason(ev: dict[str, Any], time_limit_s: int | None) -> tuple[JobState, str]:
    code = ev.get("code")
    sig = ev.get("signal")
    given = ev.get("reason")
    if ev.get("timed_out"):
        limit = format_duration(time_limit_s) if time_limit_s else "?"
        return JobState.FAILED, f"timeout: exceeded its time limit of {limit}"
    if given:
        return JobState.FAILED, str(given)
    if code == 0:
        return JobState.SUCCEEDED, "exit code 0"
    if sig:
        try:
            name = signal.Signals(int(sig)).name
        except ValueError:
            name = f"signal {sig}"
        return JobState.FAILED, f"killed by {name}"
    if code is None:
        return JobState.FAILED, "lost: no exit status"
    return JobState.FAILED, f"exit code {code}"
