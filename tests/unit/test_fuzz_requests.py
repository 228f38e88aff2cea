"""Hostile job scripts all the way to the controller's model: only clear errors.

A script's directives go through the CLI's request builder (`cli.submit`) and
then the controller's strict `JobRequest`; whatever the lines say, the result
is a request, a `DirectiveError` naming the file and line, or a pydantic
`ValidationError` the controller turns into a `bad_request` naming the field.
"""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hpcbatch.cli.submit import build_submission
from hpcbatch.controller.callers import format_validation_error
from hpcbatch.core.directives import DirectiveError
from hpcbatch.models import JobRequest

OPTIONS = [
    "-J", "--job-name", "-c", "--cpus-per-task", "--mem", "--mem-per-cpu", "--gres",
    "--gpus-per-node", "-G", "--gpus", "-t", "--time", "-o", "--output", "-e", "--error",
    "-D", "--chdir", "-p", "--partition", "-N", "--nodes", "--ntasks-per-node", "-n",
    "--ntasks", "--export", "--exclusive", "-a", "--array", "-d", "--dependency", "--fabric",
    "--main-node", "--launch-mode", "--signal", "--mail-type", "--requeue", "--bogus",
]  # fmt: skip
VALUES = [
    "", "0", "1", "-1", "4G", "1-00:00:00", "99999999999999", "gpu:2", "USR1@60", "B:TERM",
    "R:9@1", "KILL@70000", "SIGFOO", "1-3%2", "afterok:1", "ALL,X=1", "NONE", "a b", "%j.out",
    "main", "all", "\u212a", "x\ty", "--", "'", '"', "=",
]  # fmt: skip

_directive = st.tuples(
    st.sampled_from(["#SBATCH", "#HPCBATCH", "#SBATCH\t", "# SBATCH"]),
    st.sampled_from(OPTIONS),
    st.sampled_from(["=", " ", ""]),
    st.sampled_from(VALUES) | st.text(max_size=10),
).map(lambda t: f"{t[0]} {t[1]}{t[2]}{t[3]}")
_script = st.lists(_directive | st.text(max_size=20), max_size=12).map(
    lambda lines: "#!/bin/sh\n" + "\n".join(lines) + "\necho hi\n"
)


@settings(max_examples=300, deadline=None)
@given(_script, st.lists(st.sampled_from(OPTIONS[:20]) | st.sampled_from(VALUES), max_size=4))
def test_hostile_scripts_give_clear_errors(script: str, cli: list[str]) -> None:
    try:
        sub = build_submission([*cli, "-"], io.StringIO(script))
    except DirectiveError as exc:
        assert exc.path and exc.message and str(exc).startswith(exc.path), str(exc)
        return
    try:
        req = JobRequest.model_validate(sub.request)
    except ValidationError as exc:
        message = format_validation_error(exc)
        assert message.startswith("invalid job: ") and len(message) < 20_000
        return
    assert req.script == script
    if req.warn_signal is not None:
        assert 0 <= req.warn_signal.before_s <= 65535
