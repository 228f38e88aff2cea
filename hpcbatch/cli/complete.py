"""Shell completion for bash and zsh: the scripts, and the hidden `hpcbatch _complete`.

The shell script is a thin shim: on every TAB it runs `hpcbatch _complete LINE`
(the command line up to the cursor), and this module answers with the words
that fit, one per line. Commands and their options come from the argparse
parser, `submit`/`run` options from the option tables the parsers read, so
completion cannot drift from them; job ids (your own jobs), host and queue
names are asked of the controller with a short timeout, and answer nothing
when it is down. Nothing here ever prints an error: a completion that fails is
an empty one, and the shell falls back to file names.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from hpcbatch.client import Client

CONTROLLER_TIMEOUT_S = 1.0
_GLOBAL_VALUED = ("--socket", "--home")
# bash's default COMP_WORDBREAKS: a candidate is cut after the last of these in the word.
_BASH_BREAKS = " \t\n\"'@><=;|&(:"

BASH_SCRIPT = r"""# bash completion for hpcbatch: source <(hpcbatch completion bash)
_hpcbatch() {
    local IFS=$'\n'
    COMPREPLY=($(COMP_WORDBREAKS="$COMP_WORDBREAKS" \
        "${COMP_WORDS[0]}" _complete "${COMP_LINE:0:COMP_POINT}" 2>/dev/null))
    if [[ ${#COMPREPLY[@]} == 1 && ${COMPREPLY[0]} == *= ]]; then
        compopt -o nospace 2>/dev/null || true
    fi
}
complete -o bashdefault -o default -F _hpcbatch hpcbatch
"""

ZSH_SCRIPT = r"""#compdef hpcbatch
# zsh completion for hpcbatch: source <(hpcbatch completion zsh)  (after compinit)
_hpcbatch() {
    local -a found
    found=("${(@f)$(COMP_WORDBREAKS=' ' "${words[1]}" _complete \
        "${(j: :)${(@)words[1,CURRENT-1]}} ${words[CURRENT]}" 2>/dev/null)}")
    found=(${found:#})
    if (( ${#found} )); then
        compadd -Q -- "${found[@]}"
    else
        _files
    fi
}
if (( $+functions[compdef] )); then
    compdef _hpcbatch hpcbatch
fi
"""


def script(shell: str) -> str:
    """The completion script for `shell` ("bash" or "zsh")."""
    return {"bash": BASH_SCRIPT, "zsh": ZSH_SCRIPT}[shell]


# --------------------------------------------------------------------------- controller


def _ask(globals_: dict[str, str], op: str, **args: object) -> list[dict[str, object]]:
    """The controller's answer to `op`, or [] when it is down, slow or refuses."""
    from hpcbatch.client import Client
    from hpcbatch.locations import socket_path

    path = globals_.get("socket") or socket_path(globals_.get("home"))
    try:
        with Client(os.path.expanduser(path), timeout=CONTROLLER_TIMEOUT_S) as client:
            answer = client.call(op, **args)
    except Exception:  # a failed completion is an empty one, never an error
        return []
    return [a for a in answer if isinstance(a, dict)] if isinstance(answer, list) else []


def _my_jobs(globals_: dict[str, str]) -> list[str]:
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    return [str(j.get("id")) for j in _ask(globals_, "jobs", user=user) if j.get("id")]


def _names(globals_: dict[str, str], op: str) -> list[str]:
    return [str(row["name"]) for row in _ask(globals_, op) if row.get("name")]


# --------------------------------------------------------------------------- submit / run

_VALUES: dict[str, tuple[str, ...]] = {
    "--export": ("ALL", "NONE"),
    "--launch-mode": ("main", "all"),
    "--exclusive": (),
}


def _submit_options(command: str) -> dict[str, str]:
    """Every option `submit`/`run` takes -> "value" (takes one), "flag" or "optional"."""
    from hpcbatch.cli.submit import HELP_FLAGS, OWN_OPTIONS
    from hpcbatch.core.option_table import help_rows

    table = {name: arity for _g, names, _m, arity, _h in help_rows() for name in names}
    for names, metavar, commands, _help in OWN_OPTIONS:
        if command in commands:
            table.update(dict.fromkeys(names, "value" if metavar else "flag"))
    table.update(dict.fromkeys(HELP_FLAGS, "flag"))
    return table


def _submit_value(option: str, globals_: dict[str, str]) -> list[str]:
    if option in ("-p", "--partition", "--queue"):
        return _names(globals_, "queues")
    if option in ("-d", "--dependency"):
        return [f"afterok:{job}" for job in _my_jobs(globals_)]
    return list(_VALUES.get(option, ()))


def _complete_submit(command: str, words: list[str], globals_: dict[str, str]) -> list[str]:
    table = _submit_options(command)
    cur = words[-1]
    index = 0
    while index < len(words) - 1:  # the words before the one being completed
        word = words[index]
        if word == "--" or not word.startswith("-") or word == "-":
            return []  # past the options: the script's own arguments (files)
        takes_next = "=" not in word and table.get(word) == "value"
        index += 2 if takes_next else 1
    if index > len(words) - 1:  # the current word is the value of the option before it
        return _submit_value(words[-2], globals_)
    if cur.startswith("--") and "=" in cur:
        name, _, _ = cur.partition("=")
        return [f"{name}={value}" for value in _submit_value(name, globals_)]
    if cur.startswith("-"):
        return [
            name + ("=" if arity == "value" and name[1] == "-" else "")
            for name, arity in table.items()
        ]
    return []


# --------------------------------------------------------------------------- other commands

# What the positional arguments of a command are, where not a fixed choice.
_POSITIONAL: dict[str, str] = {
    "show": "jobs",
    "logs": "jobs",
    "cancel": "jobs",
    "hold": "jobs",
    "release": "jobs",
    "requeue": "jobs",
    "update": "jobs",
    "wait": "jobs",
    "hosts": "hosts",
    "queue": "queues",
}
_OPTION_VALUES: dict[str, str] = {
    "-p": "queues",
    "--queue": "queues",
    "-j": "jobs",
    "--jobs": "jobs",
    "--array": "jobs",
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _complete_command(
    sub: argparse.ArgumentParser, command: str, words: list[str], globals_: dict[str, str]
) -> list[str]:
    cur = words[-1]
    valued = {
        name: action
        for action in sub._actions
        for name in action.option_strings
        if action.nargs != 0
    }
    dynamic: dict[str, Callable[[], list[str]]] = {
        "jobs": lambda: _my_jobs(globals_),
        "hosts": lambda: _names(globals_, "hosts"),
        "queues": lambda: _names(globals_, "queues"),
    }
    if len(words) >= 2 and words[-2] in valued:
        action = valued[words[-2]]
        if action.choices:
            return [str(c) for c in action.choices]
        kind = _OPTION_VALUES.get(words[-2])
        return dynamic[kind]() if kind else []
    if cur.startswith("-"):
        return [name for action in sub._actions for name in action.option_strings]
    positional = [a for a in sub._actions if not a.option_strings]
    given = 0
    index = 0
    while index < len(words) - 1:
        word = words[index]
        index += 2 if word in valued and "=" not in word else 1
        if not word.startswith("-"):
            given += 1
    out: list[str] = []
    choices = positional[given].choices if given < len(positional) else None
    if choices:
        out += [str(c) for c in choices]
        if positional[given].nargs != "?":
            return out
    kind = _POSITIONAL.get(command)
    if kind and (given > 0 or not out):
        out += dynamic[kind]()
    return out


def _parser() -> argparse.ArgumentParser:
    """The command line's parser, read for its words: no command is ever run from it."""
    from hpcbatch.cli.parser import build_parser

    def no_client(args: argparse.Namespace) -> Client:
        raise RuntimeError("completion runs no command")

    return build_parser({}, no_client)


def candidates(line: str) -> list[str]:
    """The full words that may replace the last word of `line` (the text up to the cursor)."""
    words = line.split()
    if not line or line[-1].isspace():
        words.append("")
    words = words[1:]  # the program name
    globals_: dict[str, str] = {}
    while len(words) > 1 and words[0] in _GLOBAL_VALUED:
        globals_[words[0][2:]] = words[1]
        words = words[2:]
    if "home" in globals_ and "socket" not in globals_:
        globals_["socket"] = os.path.join(os.path.expanduser(globals_["home"]), "controller.sock")
    if not words:
        return []
    if len(words) == 1:
        if words[0].startswith("-"):
            return [*_GLOBAL_VALUED, "--version", "--help"]
        return list(_subparsers(_parser()))
    command, rest = words[0], words[1:]
    if command in ("submit", "run"):
        return _complete_submit(command, rest, globals_)
    sub = _subparsers(_parser()).get(command)
    return [] if sub is None else _complete_command(sub, command, rest, globals_)


def main(line: str) -> int:
    """`hpcbatch _complete LINE`: the words that fit, one per line, cut as the shell wants."""
    try:
        found = candidates(line)
    except Exception:  # never a traceback under the user's prompt
        return 0
    words = line.split()
    cur = "" if not line or line[-1].isspace() else words[-1]
    breaks = os.environ.get("COMP_WORDBREAKS", _BASH_BREAKS)
    cut = max((cur.rfind(c) for c in breaks if c not in " \t\n"), default=-1) + 1
    for word in dict.fromkeys(found):
        if word.startswith(cur):
            sys.stdout.write(word[cut:] + "\n")
    return 0
