"""`hpcbatch submit|run --help` and `--usage`, written from the parsers' own tables.

The sbatch options come from `core.directives`' option table and hpcbatch's
own from `cli.submit.OWN_OPTIONS`: the tables the parser reads, so the help
cannot name an option the parser refuses or miss one it takes. Imported only
when help is asked for, so `submit`'s start-up does not pay for it.
"""

from __future__ import annotations

import textwrap

from hpcbatch.cli.submit import HELP_FLAGS, OWN_OPTIONS
from hpcbatch.core.option_table import IGNORED, OPTION_GROUPS, help_rows

WIDTH = 79
_NAME_COLUMN = 30

_SYNOPSIS = {
    "submit": (
        "hpcbatch submit [OPTIONS] SCRIPT [ARGS...]",
        "hpcbatch submit [OPTIONS] --wrap CMD",
        "hpcbatch submit [OPTIONS] < SCRIPT",
        "hpcbatch submit --definition NAME[:REV] [OPTIONS] [CMD...]",
    ),
    "run": ("hpcbatch run [OPTIONS] CMD [ARGS...]", "hpcbatch run --pty [OPTIONS] CMD [ARGS...]"),
    "alloc": ("hpcbatch alloc [OPTIONS] [CMD [ARGS...]]",),
}
_ABOUT = {
    "submit": (
        "Submit a batch job script, as sbatch does. The options are sbatch's; a script's"
        " #SBATCH and #HPCBATCH lines take the same ones (the command line wins)."
        " Options go before the script; what follows it is the script's arguments."
    ),
    "run": (
        "Run a command as a job and stream its output, as srun does; exit with the"
        " job's exit status. The options are sbatch's."
    ),
    "alloc": (
        "Get an allocation, as salloc does: hold the nodes asked for, then run CMD"
        " (default: your $SHELL) here, where srun and mpirun run on the allocated nodes."
        " The allocation is released when CMD ends. The options are sbatch's."
    ),
}
_OWN_GROUP = "hpcbatch's own"
_HELP_ROWS = (
    (("-h", "--help"), "", "this help"),
    (("--usage",), "", "a short usage message"),
)


def _spelling(names: tuple[str, ...], metavar: str, arity: str) -> str:
    """`-c, --cpus-per-task=N`; a long-only option indented under the short ones."""
    shown = ", ".join(names)
    if all(n.startswith("--") for n in names):
        shown = "    " + shown  # under the long names of `-c, --cpus-per-task`
    if arity == "value":
        shown += "=" + (metavar or "VALUE")
    elif arity == "optional" and metavar:
        shown += "[=" + metavar + "]"
    return shown


def _row(names: tuple[str, ...], metavar: str, arity: str, text: str) -> list[str]:
    left = "  " + _spelling(names, metavar, arity)
    body = textwrap.wrap(text, WIDTH - _NAME_COLUMN) or [""]
    lines = [left] if len(left) >= _NAME_COLUMN - 1 else [left.ljust(_NAME_COLUMN) + body.pop(0)]
    lines += [" " * _NAME_COLUMN + more for more in body]
    return lines


def _own(command: str) -> list[tuple[tuple[str, ...], str, str, str]]:
    return [
        (names, metavar, "value" if metavar else "flag", text)
        for names, metavar, commands, text in OWN_OPTIONS
        if command in commands
    ]


def help_text(command: str) -> str:
    """The whole `--help` of `submit` or `run`."""
    out = ["usage: " + _SYNOPSIS[command][0]]
    out += ["       " + more for more in _SYNOPSIS[command][1:]]
    out += ["", *textwrap.wrap(_ABOUT[command], WIDTH)]
    rows = help_rows()
    for group in OPTION_GROUPS:
        if group == IGNORED:
            out += ["", _OWN_GROUP + ":"]
            for names, metavar, arity, text in _own(command):
                out += _row(names, metavar, arity, text)
            for names, metavar, text in _HELP_ROWS:
                out += _row(names, metavar, "flag", text)
        out += ["", group + ":"]
        for row_group, names, metavar, arity, text in rows:
            if row_group == group:
                out += _row(names, metavar, arity, text)
    out += [
        "",
        "Sizes: 512M, 4G. Times: MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]. Every option in",
        "full: docs/job-scripts.md.",
    ]
    return "\n".join(out) + "\n"


def usage_text(command: str) -> str:
    """The short form: every option on a few lines, as `sbatch --usage`."""
    words = []
    for _group, names, metavar, arity, _text in help_rows():
        if _group == IGNORED:
            continue
        name = names[0]
        if arity == "value":
            joint = " " if len(name) == 2 else "="
            words.append(f"[{name}{joint}{metavar or 'VALUE'}]")
        else:
            words.append(f"[{name}]")
    for names, metavar, arity, _text in _own(command):
        words.append(f"[{names[-1]}={metavar}]" if arity == "value" else f"[{names[0]}]")
    words.append("[" + "|".join(HELP_FLAGS) + "]")
    tail = "SCRIPT [ARGS...]" if command == "submit" else "CMD [ARGS...]"
    prefix = f"usage: hpcbatch {command} "
    lines = textwrap.wrap(
        " ".join([*words, tail]),
        WIDTH,
        initial_indent=prefix,
        subsequent_indent=" " * len(prefix),
        break_on_hyphens=False,
    )
    return "\n".join(lines) + "\n"
