"""Turn `hpcbatch submit`/`run` arguments and a job script into one JSON request.

Pure: the submitter's files, standard input, environment and working directory
come in through a `ScriptSource`, an `environ` and a `cwd`. The CLI parses here
with its own (`cli.submit`), so a bad line is reported with its file and line
number before anything reaches the controller; the controller runs the same
function for the quick client's `submit_argv` operation (`cli.quick`), asking
the client for the script's text when the arguments name one. Either way the
controller validates the result again with its strict model.
"""

from __future__ import annotations

import posixpath
import shlex

from hpcbatch.core.directives import (
    JOB_REQUEST_KEYS,
    DirectiveError,
    ExportSpec,
    merge,
    parse_args,
    parse_script,
    split_submit_argv,
)

TYPE_CHECKING = False  # importing typing would cost `hpcbatch submit` ~4 ms of start-up
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

# hpcbatch's own options of `submit`/`run` (sbatch's are core.directives' table):
# (names, metavar (empty: a flag), the commands that take it, help). The parser
# below and `--help` (cli/usage.py) both read this table.
OWN_OPTIONS = (
    (("--wrap",), "CMD", ("submit",), "run CMD as the job script (under /bin/sh)"),
    (
        ("--definition",),
        "NAME[:REV]",
        ("submit",),
        "submit a job definition (hpcbatch definitions list)",
    ),
    (
        ("--parameters",),
        "K=V[,K=V]",
        ("submit",),
        "values for the definition's Ref::K placeholders (repeatable)",
    ),
    (
        ("--propagate-tags", "--no-propagate-tags"),
        "",
        ("submit",),
        "with --definition: the job starts with (or without) the definition's tags, "
        "whatever the definition says (AWS Batch's propagateTags)",
    ),
    (("--retry-attempts",), "N", ("submit", "run"), "up to N attempts, 1 to 10 (default 1)"),
    (("-W", "--wait"), "", ("submit",), "wait for the job to end; exit 0 if it SUCCEEDED"),
    (("--json",), "", ("submit",), "print the submission (and with --wait, the job) as JSON"),
    (("--parsable",), "", ("submit",), "print only the job id"),
    # run's task launching (srun's own options; -n/-N/--ntasks-per-node/-c are sbatch's):
    (("-l", "--label"), "", ("run",), "prefix each output line with its task number"),
    (("--mpi",), "TYPE", ("run",), "the tasks' MPI: openmpi, mpich or none (default: detect)"),
    (("--pty",), "", ("run",), "run the command on a pseudo-terminal on the first node"),
    (
        ("-i", "--input"),
        "MODE",
        ("run",),
        "who reads this command's stdin: 0 (task 0, the default), all, none, or a task number",
    ),
)
HELP_FLAGS = ("-h", "--help", "--usage")
OWN_FLAGS = tuple(name for names, metavar, _, _ in OWN_OPTIONS if not metavar for name in names)
OWN_VALUED = tuple(name for names, metavar, _, _ in OWN_OPTIONS if metavar for name in names)
# Host targeting and job control (docs/user-guide.md): passed on from the command line
# and overridable on a definition's submission (`hpcbatch.jobdefs` too).
CONTROL_KEYS = (
    "nodelist", "exclude", "constraint", "gpu_type", "begin", "deadline", "hold", "priority",
    "nice", "requeue",
)  # fmt: skip
# What a submission from a definition may override (see `hpcbatch.jobdefs`).
DEFINITION_OVERRIDES = (
    "name",
    "queue",
    "share_id",
    "tags",
    "cpus",
    "memory_mb",
    "gpus",
    "nodes",
    "time_limit_s",
    "output",
    "error",
    "workdir",
    "array",
    "dependency",
    "ntasks_per_node",
    "fabric",
    "exclusive",
    "warn_signal",
    *CONTROL_KEYS,
)
PASSED_EXTRAS = (
    "ntasks",
    "exclusive",
    "array",
    "dependency",
    "fabric",
    "image",
    "mounts",
    "main_node",
    "launch_mode",
    "warn_signal",
    *CONTROL_KEYS,
)


class ScriptNeeded(Exception):
    """The arguments name a job script (`path`, or "-" for standard input) that this
    `ScriptSource` does not hold: the quick client reads it and asks again."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class EnvironmentNeeded(Exception):
    """The submission exports some of the submitter's environment (`--export`), which
    the quick client sends only when asked: most submissions take none of it."""


class ScriptSource:
    """Where a submission's job script comes from: the submitter's files and standard
    input. The CLI's reads them (`cli.submit.LocalScripts`); the controller's holds
    what the quick client sent and raises `ScriptNeeded` for anything else."""

    def read(self, path: str) -> str:
        """The text of the script at `path` (relative to the submitter's directory);
        raises DirectiveError naming the path when it cannot be read."""
        raise ScriptNeeded(path)

    def read_stdin(self) -> str | None:
        """Standard input's text, or None where the submitter has no standard input."""
        raise ScriptNeeded("-")

    def stdin_piped(self) -> bool:
        """Whether standard input is there and not a terminal (a script piped in)."""
        return False

    def realpath(self, path: str) -> str:
        """`path` with its symbolic links resolved, as the submitter sees it."""
        raise ScriptNeeded(path)


class Submission:
    """What `submit`/`run` send, and how the command behaves afterwards."""

    __slots__ = ("json", "parsable", "pty", "request", "wait", "warnings")

    def __init__(
        self,
        request: dict[str, Any],
        warnings: list[str],
        wait: bool = False,
        json: bool = False,
        parsable: bool = False,
        pty: bool = False,
    ) -> None:
        self.pty = pty
        self.request = request
        self.warnings = warnings
        self.wait = wait
        self.json = json
        self.parsable = parsable


def _own_options(tokens: list[str]) -> tuple[dict[str, Any], list[str]]:
    own: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("--wait", "-W"):
            own["wait"] = True
        elif tok in ("--json", "--parsable"):
            own[tok[2:]] = True
        elif tok in ("-l", "--label", "--pty"):
            own["label" if tok == "-l" else tok[2:]] = True
        elif tok in ("--propagate-tags", "--no-propagate-tags"):
            own["propagate_tags"] = tok == "--propagate-tags"  # the last one wins
        elif tok.split("=", 1)[0] in OWN_VALUED:
            key, eq, value = tok.partition("=")
            if not eq:
                if i + 1 >= len(tokens):
                    raise DirectiveError("command line", None, f"{key} needs a value")
                value = tokens[i + 1]
                i += 1
            name = "input" if key == "-i" else key[2:].replace("-", "_")
            if name == "parameters":
                own.setdefault("parameters", {}).update(_parameters(value))
            else:
                own[name] = value
        else:
            rest.append(tok)
        i += 1
    return own, rest


def _parameters(text: str) -> dict[str, str]:
    """`--parameters k=v[,k2=v2]` (repeatable), as `aws batch submit-job --parameters`."""
    out: dict[str, str] = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise DirectiveError("command line", None, f"--parameters: {item!r} is not NAME=VALUE")
        out[key.strip()] = value
    return out


def _not_overridable(values: dict[str, Any]) -> list[str]:
    """A warning for each option `--definition` cannot take (the definition decides it)."""
    from hpcbatch.core.option_table import OPTIONS

    shown = {o.key: o.names[-1] for o in reversed(OPTIONS)}
    skip = {*DEFINITION_OVERRIDES, "export", "cpus_per_task", "ntasks", "gpus_per_job",
            "mem_per_cpu_mb", "no_requeue"}  # fmt: skip
    return [
        f"command line: ignored: {shown.get(key, key)} (a job definition sets it)"
        for key in values
        if key not in skip
    ]


def _definition_submission(
    own: dict[str, Any],
    values: dict[str, Any],
    command: list[str],
    environ: Mapping[str, str],
    cwd: str,
) -> dict[str, Any]:
    """The request for `submit --definition NAME[:REV]`: only what the user gave."""
    request: dict[str, Any] = {"definition": own["definition"]}
    request.update({k: v for k, v in values.items() if k in DEFINITION_OVERRIDES})
    if own.get("parameters"):
        request["parameters"] = own["parameters"]
    if command:
        request["command"] = command
    export = values.get("export")
    if isinstance(export, ExportSpec):
        request["env"] = export.environment(environ)
    if "retry_attempts" in own:
        request["retry_attempts"] = _retry_attempts(own["retry_attempts"])
    if "propagate_tags" in own:
        request["propagate_tags"] = own["propagate_tags"]
    request["submit_dir"] = cwd
    return request


def _check_array_and_dependency(request: dict[str, Any], origin: str) -> None:
    """Refuse a bad `--array`/`--dependency` here, before anything is sent."""
    if not request.get("array") and not request.get("dependency"):
        return  # the common case pays for neither parser's import
    from hpcbatch.core.arrays import ArraySpecError, parse_spec
    from hpcbatch.core.dependencies import DependencyError, parse

    try:
        if request.get("array"):
            parse_spec(str(request["array"]))
        if request.get("dependency"):
            parse(str(request["dependency"]))
    except (ArraySpecError, DependencyError) as exc:
        flag = "--array" if isinstance(exc, ArraySpecError) else "--dependency"
        raise DirectiveError(origin, None, f"{flag}: {exc}") from None


def _retry_attempts(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 10:
        raise DirectiveError("command line", None, "--retry-attempts needs a number from 1 to 10")
    return int(text)


def _read_script(path: str, source: ScriptSource) -> str:
    if not path:
        raise DirectiveError("command line", None, "the script path is empty")
    if path == "-":
        text = source.read_stdin()
        if text is None:
            raise DirectiveError("command line", None, "no script given on standard input")
        return text
    return source.read(path)


def help_request(argv: list[str]) -> str | None:
    """Which help `argv` asks for: "help" (`-h`, `--help`), "usage" (`--usage`) or None."""
    opts, _ = split_submit_argv(argv, flags=OWN_FLAGS + HELP_FLAGS, valued=OWN_VALUED)
    for token in opts:
        if token in ("-h", "--help"):
            return "help"
        if token == "--usage":
            return "usage"
    return None


def build_submission(
    argv: list[str],
    source: ScriptSource,
    *,
    environ: Mapping[str, str],
    cwd: str,
    run_mode: bool = False,
    umask: int | None = None,
) -> Submission:
    """Parse `submit`/`run` arguments; raises DirectiveError naming the file and line.

    `environ`, `cwd` and `umask` are the submitter's environment, working directory
    and umask (sent with the job, as Slurm's SLURM_UMASK: None, the hosts' 077); the
    script is read through `source` (which may raise ScriptNeeded)."""
    opts, rest = split_submit_argv(argv, flags=OWN_FLAGS, valued=OWN_VALUED)
    own, sbatch_tokens = _own_options(opts)
    cli = parse_args(sbatch_tokens, origin="command line")
    if "definition" in own:
        if "wrap" in own or run_mode:
            raise DirectiveError("command line", None, "--definition takes no --wrap or script")
        from_definition = _definition_submission(
            own, merge(parse_args([], origin="command line"), cli), rest, environ, cwd
        )
        _check_array_and_dependency(from_definition, "command line")
        if umask is not None:
            from_definition["umask"] = umask
        return Submission(
            request=from_definition,
            warnings=cli.warnings + _not_overridable(cli.values),
            wait=bool(own.get("wait")),
            json=bool(own.get("json")),
            parsable=bool(own.get("parsable")),
        )
    for needs in ("parameters", "propagate_tags"):
        if needs in own:
            flag = "--parameters" if needs == "parameters" else "--[no-]propagate-tags"
            raise DirectiveError("command line", None, f"{flag} needs --definition")
    script_path: str | None = None
    args: list[str] = []
    feed = False  # run: the job's stdin is this command's
    if run_mode:
        if not rest:
            raise DirectiveError(
                "command line", None, "run: name a command to run (run --help lists the options)"
            )
        text = _run_script(own, merge(parse_args([], origin="command line"), cli))
        args = list(rest)
        feed = not own.get("pty") and _input_mode(own) != "none"
        default_name = posixpath.basename(rest[0])
    elif "wrap" in own:
        if rest:
            raise DirectiveError("command line", None, "--wrap takes no script")
        text = "#!/bin/sh\n" + own["wrap"] + "\n"
        default_name = "wrap"
    elif rest:
        script_path = rest[0]
        text = _read_script(script_path, source)
        args = list(rest[1:])
        default_name = posixpath.basename(script_path) if script_path != "-" else "stdin"
    elif source.stdin_piped():
        script_path = "-"
        text = _read_script("-", source)
        default_name = "stdin"
    else:
        raise DirectiveError(
            "command line",
            None,
            "name a job script (or use --wrap CMD, or pipe one on stdin);"
            " submit --help lists the options",
        )
    if not text.strip():
        raise DirectiveError(script_path or "command line", None, "the job script is empty")
    script_opts, _ = parse_script(text, script_path or "script")
    values = merge(script_opts, cli)
    export = values.pop("export", None)
    if not isinstance(export, ExportSpec):
        export = ExportSpec(everything=False)
    request: dict[str, Any] = {
        k: v for k, v in values.items() if k in JOB_REQUEST_KEYS or k in PASSED_EXTRAS
    }
    _check_array_and_dependency(request, script_path or "command line")
    request.setdefault("name", default_name)
    request["script"] = text
    request["args"] = args
    request["env"] = export.environment(environ)
    request["submit_dir"] = cwd
    if umask is not None:
        request["umask"] = umask
    if feed:
        request["stdin"] = True  # `run` feeds it its own stdin (cli/runjob.py)
    if "retry_attempts" in own:
        request["retry"] = {"attempts": _retry_attempts(own["retry_attempts"])}
    if script_path and script_path != "-":
        request["script_path"] = source.realpath(script_path)
    return Submission(
        request=request,
        warnings=script_opts.warnings + cli.warnings,
        wait=bool(own.get("wait")),
        json=bool(own.get("json")),
        parsable=bool(own.get("parsable")),
        pty=bool(own.get("pty")),
    )


def _run_script(own: dict[str, Any], values: dict[str, Any]) -> str:
    """`run`'s job script: the command itself, or `srun` of it when tasks are asked for.

    As Slurm's srun outside a job: -n, -N, --ntasks-per-node, -c, --label and --mpi
    start that many tasks over the nodes, each with SLURM_PROCID and the others
    (the job's srun, transport/agent/srun.py); a plain `run CMD` execs CMD.
    """
    flags: list[str] = []
    if own.get("label"):
        flags.append("--label")
    if _input_mode(own) not in ("0", "none"):
        flags.append(f"--input={_input_mode(own)}")
    if "mpi" in own:
        flags.append(shlex.quote("--mpi=" + str(own["mpi"])))
    if values.get("cpus_per_task"):
        flags.append(f"--cpus-per-task={int(values['cpus_per_task'])}")
    tasks = any(values.get(k) for k in ("ntasks", "ntasks_per_node"))
    if values.get("launch_mode") == "all":  # every node runs the command itself: no srun
        tasking = [f for f in flags if not f.startswith("--cpus-per-task")]
        if tasks or tasking:
            raise DirectiveError(
                "command line",
                None,
                "run --launch-mode all starts the command once on each node itself; "
                "-n, --ntasks-per-node, --label, --mpi and -i need srun's task launching "
                "(leave --launch-mode out)",
            )
        return '#!/bin/sh\nexec "$@"\n'
    if not flags and not tasks and int(values.get("nodes") or 1) <= 1:
        return '#!/bin/sh\nexec "$@"\n'
    return "#!/bin/sh\nexec srun " + " ".join([*flags, "--"]) + ' "$@"\n'


def _input_mode(own: dict[str, Any]) -> str:
    """`run -i/--input`: srun's stdin modes, checked."""
    mode = str(own.get("input", "0")).strip().lower()
    if mode not in ("all", "none") and not mode.isdigit():
        raise DirectiveError(
            "command line", None, f"--input {mode!r}: give 0 (task 0), all, none or a task number"
        )
    return str(int(mode)) if mode.isdigit() else mode


def describe_command(argv: list[str]) -> str:
    return shlex.join(argv)
