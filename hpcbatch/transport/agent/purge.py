"""What happens to an attempt directory once its exit is collected: `ack`, `purge`.

`ack` marks the attempts whose exit the controller has recorded (the
`collected` file: `hello` no longer lists them). `purge` removes attempt
directories past their retention age: only acknowledged attempts are
candidates, aged from that acknowledgement; a running attempt, or one whose
exit the controller has not yet read, is never touched. `shutil.rmtree` works
on descriptors and does not follow symbolic links, so a job's own files
cannot steer it outside the directory (docs/operations.md).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Container
from typing import TYPE_CHECKING, Any

from hpcbatch.transport.agent.procs import want, want_attempt
from hpcbatch.transport.agent.protocol import AckReply, BadRequest, PurgeReply

if TYPE_CHECKING:  # the agent runs on Python 3.8: no subscripted builtins at run time
    State = Callable[[str], tuple[str, Any]]  # the agent's state(attempt): (name, exit)


def collected_ops(
    root: str, running: Container[str], state: State
) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """The ops' handlers over the agent's attempts directory, its running attempts and
    its view of an attempt's state."""
    return {
        "ack": lambda req: ack_attempts(root, state, req),
        "purge": lambda req: purge_attempts(root, running, req),
    }


def ack_attempts(root: str, state: State, req: dict[str, Any]) -> AckReply:
    acked = []
    for attempt in map(want_attempt, want(req, "attempts", list, [])):
        adir = os.path.join(root, attempt)
        if os.path.isdir(adir) and state(attempt)[0] != "running":
            with open(os.path.join(adir, "collected"), "w") as f:
                f.write(f"{time.time()}\n")
            acked.append(attempt)
    return {"acked": acked}


def purge_attempts(root: str, running: Container[str], req: dict[str, Any]) -> PurgeReply:
    older = want(req, "older_than_s", float, None)
    if older is None or older < 0:
        raise BadRequest("purge: older_than_s must be a number of seconds from 0")
    only = req.get("attempts")  # a list: these (when collected) whatever their age
    cutoff = time.time() - older
    removed: list[str] = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        names = []
    for name in names:
        if name in running or (only is not None and name not in only):
            continue
        marker = os.path.join(root, name, "collected")
        try:
            acked = os.stat(marker).st_mtime
        except OSError:
            continue  # not acknowledged: its exit is still to be read
        if only is None and acked >= cutoff:
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        removed.append(name)
    return {"removed": removed}
