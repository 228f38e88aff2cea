"""The pure submit parser (`core.submitargv`) with a script source that holds nothing:
what the controller's `submit_argv` sees before the quick client sends the script."""

from __future__ import annotations

import pytest

from hpcbatch.core.directives import DirectiveError
from hpcbatch.core.submitargv import ScriptNeeded, ScriptSource, build_submission

ENV = {"HOME": "/home/u", "FOO": "bar"}


class Sent(ScriptSource):
    def __init__(self, path: str, text: str, piped: bool = False) -> None:
        self.path, self.text, self.piped = path, text, piped

    def read(self, path: str) -> str:
        if path != self.path:
            raise ScriptNeeded(path)
        return self.text

    def read_stdin(self) -> str | None:
        return self.read("-")

    def stdin_piped(self) -> bool:
        return self.piped

    def realpath(self, path: str) -> str:
        return "/real/" + path


def test_a_named_script_is_asked_for_then_parsed() -> None:
    argv = ["-p", "batch", "--export=FOO", "job.sh", "x"]
    with pytest.raises(ScriptNeeded) as need:
        build_submission(argv, ScriptSource(), environ=ENV, cwd="/w")
    assert need.value.path == "job.sh"
    sub = build_submission(
        argv, Sent("job.sh", "#!/bin/sh\n#SBATCH -J n\ntrue\n"), environ=ENV, cwd="/w"
    )
    req = sub.request
    assert (req["name"], req["queue"], req["args"], req["submit_dir"]) == (
        "n",
        "batch",
        ["x"],
        "/w",
    )
    assert req["script_path"] == "/real/job.sh" and req["env"] == {"FOO": "bar"}


def test_wrap_needs_no_script_and_stdin_only_when_piped() -> None:
    sub = build_submission(["--wrap", "true"], ScriptSource(), environ=ENV, cwd="/w")
    assert sub.request["script"] == "#!/bin/sh\ntrue\n" and "script_path" not in sub.request
    with pytest.raises(DirectiveError, match="name a job script"):
        build_submission([], ScriptSource(), environ=ENV, cwd="/w")
    with pytest.raises(ScriptNeeded) as need:
        build_submission([], Sent("x", "", piped=True), environ=ENV, cwd="/w")
    assert need.value.path == "-"
    sub = build_submission([], Sent("-", "#!/bin/sh\ntrue\n", piped=True), environ=ENV, cwd="/w")
    assert sub.request["name"] == "stdin"


def test_a_bad_option_is_refused_before_any_script_is_asked_for() -> None:
    with pytest.raises(DirectiveError, match="--mem"):
        build_submission(["--mem=4Q", "job.sh"], ScriptSource(), environ=ENV, cwd="/w")


def test_the_submitters_umask_goes_with_the_request() -> None:
    """As Slurm's SLURM_UMASK: given, it is in the request (script and definition
    submissions alike); not given (an API caller), the request has none (hosts: 077)."""
    sub = build_submission(["--wrap", "true"], ScriptSource(), environ=ENV, cwd="/w", umask=0o027)
    assert sub.request["umask"] == 0o027
    by_name = build_submission(
        ["--definition", "sim"], ScriptSource(), environ=ENV, cwd="/w", umask=0o077
    )
    assert by_name.request["umask"] == 0o077
    plain = build_submission(["--wrap", "true"], ScriptSource(), environ=ENV, cwd="/w")
    assert "umask" not in plain.request


def test_run_with_launch_mode_all_runs_the_command_on_each_node_without_srun() -> None:
    """`run -N 4 --launch-mode all CMD`: every node runs CMD once. Wrapping it in srun
    made each of the 4 nodes start 4 tasks, racing the other nodes' exits."""
    sub = build_submission(
        ["-N", "4", "--launch-mode", "all", "true"],
        ScriptSource(),
        environ=ENV,
        cwd="/w",
        run_mode=True,
    )
    assert sub.request["script"] == '#!/bin/sh\nexec "$@"\n' and sub.request["args"] == ["true"]
    plain = build_submission(
        ["-N", "4", "true"], ScriptSource(), environ=ENV, cwd="/w", run_mode=True
    )
    assert "exec srun" in plain.request["script"]
    for tasking in (["-n", "8"], ["--label"], ["--ntasks-per-node=2"]):
        with pytest.raises(DirectiveError, match="launch-mode all"):
            build_submission(
                ["-N", "4", "--launch-mode", "all", *tasking, "true"],
                ScriptSource(),
                environ=ENV,
                cwd="/w",
                run_mode=True,
            )
