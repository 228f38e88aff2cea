"""Turn `hpcbatch submit`/`run` arguments and a job script into one JSON request.

Directives and options are parsed here, in the client, by the same pure
parser (`core.directives`), so a bad line is reported with its file and line
number before anything reaches the controller. The controller validates the
result again with its strict model.
"""

from __future__ import annotations

import os
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
    from typing import IO, Any

OWN_FLAGS = ("--wait", "-W", "--json", "--parsable")
OWN_VALUED = ("--wrap", "--definition", "--parameters", "--retry-attempts")
# What a submission from a definition may override (see `hpcbatch.jobdefs`).
DEFINITION_OVERRIDES = (
    "name",
    "queue",
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
)


class Submission:
    """What `submit`/`run` send, and how the command behaves afterwards."""

    __slots__ = ("json", "parsable", "request", "wait", "warnings")

    def __init__(
        self,
        request: dict[str, Any],
        warnings: list[str],
        wait: bool = False,
        json: bool = False,
        parsable: bool = False,
    ) -> None:
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
        elif tok.split("=", 1)[0] in OWN_VALUED:
            key, eq, value = tok.partition("=")
            if not eq:
                if i + 1 >= len(tokens):
                    raise DirectiveError("command line", None, f"{key} needs a value")
                value = tokens[i + 1]
                i += 1
            name = key[2:].replace("-", "_")
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


def _definition_submission(
    own: dict[str, Any], values: dict[str, Any], command: list[str]
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
        request["env"] = export.environment(os.environ)
    if "retry_attempts" in own:
        request["retry_attempts"] = _retry_attempts(own["retry_attempts"])
    request["submit_dir"] = os.getcwd()
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


def _read_script(path: str, stdin: IO[str] | None) -> str:
    if not path:
        raise DirectiveError("command line", None, "the script path is empty")
    if path == "-":
        if stdin is None:
            raise DirectiveError("command line", None, "no script given on standard input")
        return stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise DirectiveError(path, None, "no such file") from None
    except IsADirectoryError:
        raise DirectiveError(path, None, "is a directory, not a job script") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DirectiveError(path, None, f"cannot read the script: {exc}") from None


def build_submission(
    argv: list[str], stdin: IO[str] | None, *, run_mode: bool = False
) -> Submission:
    """Parse `submit`/`run` arguments; raises DirectiveError naming the file and line."""
    opts, rest = split_submit_argv(argv, flags=OWN_FLAGS, valued=OWN_VALUED)
    own, sbatch_tokens = _own_options(opts)
    cli = parse_args(sbatch_tokens, origin="command line")
    if "definition" in own:
        if "wrap" in own or run_mode:
            raise DirectiveError("command line", None, "--definition takes no --wrap or script")
        from_definition = _definition_submission(
            own, merge(parse_args([], origin="command line"), cli), rest
        )
        _check_array_and_dependency(from_definition, "command line")
        return Submission(
            request=from_definition,
            warnings=cli.warnings,
            wait=bool(own.get("wait")),
            json=bool(own.get("json")),
            parsable=bool(own.get("parsable")),
        )
    if "parameters" in own:
        raise DirectiveError("command line", None, "--parameters needs --definition")
    script_path: str | None = None
    args: list[str] = []
    if run_mode:
        if not rest:
            raise DirectiveError("command line", None, "run: name a command to run")
        text = '#!/bin/sh\nexec "$@"\n'
        args = list(rest)
        default_name = os.path.basename(rest[0])
    elif "wrap" in own:
        if rest:
            raise DirectiveError("command line", None, "--wrap takes no script")
        text = "#!/bin/sh\n" + own["wrap"] + "\n"
        default_name = "wrap"
    elif rest:
        script_path = rest[0]
        text = _read_script(script_path, stdin)
        args = list(rest[1:])
        default_name = os.path.basename(script_path) if script_path != "-" else "stdin"
    elif stdin is not None and not stdin.isatty():
        script_path = "-"
        text = stdin.read()
        default_name = "stdin"
    else:
        raise DirectiveError(
            "command line", None, "name a job script (or use --wrap CMD, or pipe one on stdin)"
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
    request["env"] = export.environment(os.environ)
    request["submit_dir"] = os.getcwd()
    if "retry_attempts" in own:
        request["retry"] = {"attempts": _retry_attempts(own["retry_attempts"])}
    if script_path and script_path != "-":
        request["script_path"] = os.path.realpath(script_path)
    return Submission(
        request=request,
        warnings=script_opts.warnings + cli.warnings,
        wait=bool(own.get("wait")),
        json=bool(own.get("json")),
        parsable=bool(own.get("parsable")),
    )


def describe_command(argv: list[str]) -> str:
    return shlex.join(argv)
