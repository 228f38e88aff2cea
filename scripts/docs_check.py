#!/usr/bin/env python3
"""Run the shell examples of README.md and docs/*.md that are marked runnable.

A fenced block is runnable when the line just before its opening fence is
`<!-- runnable -->` (invisible on GitHub). In a `sh`/`bash`/`console` block
every line is a command (a trailing `\\` continues it; `$ ` prompts are
dropped), run in order with bash in a scratch directory where `examples/` and
`inventory/` of this checkout are at hand; each must exit 0, except a command
whose comment begins with `refused` or `fails`, which must exit non-zero; and
where the comment quotes a text (`# ... "Submitted job 14"`), the command's
output must contain it. A
runnable block of another language whose first line is `# NAME` (say a
`# sim.toml` block) is written to the scratch directory as NAME, for the
commands after it.

Before the first command it does what the README's tour assumes, `make demo`:
`hpcbatch demo` with `HPCBATCH_HOME` in a fresh directory, which brings up a
sandbox of real sshd hosts and a controller and runs the example jobs. So the
job ids in the docs are those a new user sees. Afterwards the controller is
stopped and the sandbox brought down. Files are checked in the order README.md,
then docs/*.md by name: later files see what earlier ones did.

    python3 scripts/docs_check.py            # run them all; exit 1 if any failed
    python3 scripts/docs_check.py --list     # print the runnable commands only

`make test` runs it (tests/integration/test_docs.py).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- runnable -->"
SHELLS = ("sh", "bash", "console", "shell")
COMMAND_TIMEOUT_S = 180.0
_FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")


@dataclass
class Command:
    """One command of a runnable block, where it is written, and what it must do."""

    path: Path
    line: int
    text: str
    must_fail: bool = False
    expect: str = ""  # the output must contain this (a "quoted" text in the comment)


@dataclass
class FileBlock:
    """A runnable non-shell block: written to the scratch directory as `name`."""

    path: Path
    line: int
    name: str
    text: str


@dataclass
class Result:
    step: Command
    code: int
    output: str
    seconds: float
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        self.ok = (self.code != 0) if self.step.must_fail else (self.code == 0)
        self.ok = self.ok and self.step.expect in self.output


def doc_files(root: Path = REPO_ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _comment(command: str) -> str:
    """The text of a trailing `# comment` outside quotes (approximately, as a reader sees it)."""
    quote = ""
    for index, char in enumerate(command):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or command[index - 1] in " \t"):
            return command[index + 1 :].strip()
    return ""


def blocks(path: Path) -> list[Command | FileBlock]:
    """The runnable steps of one Markdown file, in order."""
    lines = path.read_text().splitlines()
    steps: list[Command | FileBlock] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, language = opening[1], opening[2]
        body_start = index + 1
        end = body_start
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        runnable = index > 0 and lines[index - 1].strip() == MARKER
        if runnable:
            body = lines[body_start:end]
            if language in SHELLS:
                steps += _commands(path, body_start + 1, body)
            elif body and body[0].startswith("# "):
                name = body[0][2:].strip()
                steps.append(FileBlock(path, body_start + 1, name, "\n".join(body) + "\n"))
            else:
                raise SystemExit(
                    f"{path}:{index + 1}: a runnable {language or 'plain'} block must be a "
                    "shell block or start with `# FILENAME`"
                )
        index = end + 1
    return steps


def _commands(path: Path, first_line: int, body: list[str]) -> list[Command]:
    out: list[Command] = []
    pending = ""
    start = first_line
    for offset, raw in enumerate(body):
        text = raw[2:] if raw.startswith("$ ") else raw
        if not pending:
            start = first_line + offset
        if pending:
            text = text.lstrip()
        if text.rstrip().endswith("\\"):
            pending += text.rstrip()[:-1].rstrip() + " "
            continue
        text = (pending + text).strip()
        pending = ""
        if not text or text.startswith("#"):
            continue
        comment = _comment(text)
        quoted = re.search(r'"([^"]+)"', comment)
        out.append(
            Command(
                path,
                start,
                text,
                must_fail=comment.lower().startswith(("refused", "fails")),
                expect=quoted[1] if quoted else "",
            )
        )
    return out


def _environment(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["HPCBATCH_HOME"] = str(home)
    env.pop("HPCBATCH_SOCKET", None)
    env.pop("HPCBATCH_INVENTORY", None)
    bin_dir = home / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "hpcbatch"  # this checkout's CLI, whatever is on PATH: the launcher
    sys.path.insert(0, str(REPO_ROOT))  # `make venv` writes (python -S, cli.quick)
    from hpcbatch.cli.quick import write_launcher

    write_launcher(str(exe))
    venv_bin = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}:{venv_bin}:{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _run(command: str, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    try:
        done = subprocess.run(
            ["bash", "--norc", "--noprofile", "-o", "pipefail", "-c", command],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else ""
        return 124, f"{out}\n(timed out after {timeout:.0f} s)"
    return done.returncode, done.stdout


def _where(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def check(files: list[Path], verbose: bool = True) -> list[Result]:
    """Start the demo's sandbox and controller, run every runnable step, stop them."""
    steps = [step for path in files for step in blocks(path)]
    home = Path(tempfile.mkdtemp(prefix="hb-docs-", dir="/tmp"))
    home.chmod(0o755)  # as root, the sandbox's login user enters it
    work = home / "work"
    work.mkdir()
    for name in ("examples", "inventory"):
        (work / name).symlink_to(REPO_ROOT / name)
    env = _environment(home)
    results: list[Result] = []
    try:
        code, output = _run("hpcbatch demo", work, env, 300)
        if code != 0:
            raise SystemExit(f"docs_check: `hpcbatch demo` failed ({code}):\n{output}")
        for step in steps:
            if isinstance(step, FileBlock):
                (work / step.name).write_text(step.text)
                continue
            t0 = time.monotonic()
            code, output = _run(step.text, work, env, COMMAND_TIMEOUT_S)
            result = Result(step, code, output, time.monotonic() - t0)
            results.append(result)
            if verbose or not result.ok:
                mark = "ok  " if result.ok else "FAIL"
                print(f"{mark} {_where(step.path)}:{step.line}: {step.text}", flush=True)
            if not result.ok:
                want = "a failure" if step.must_fail else "exit 0"
                if step.expect:
                    want += f" and {step.expect!r} in the output"
                print(f"     exit {code} (wanted {want}); output:", flush=True)
                print("     " + output.rstrip().replace("\n", "\n     "), flush=True)
    finally:
        _run("hpcbatch stop; sleep 1; hpcbatch sandbox down", work, env, 120)
        shutil.rmtree(home, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="default: README.md docs/*.md")
    parser.add_argument("--list", action="store_true", help="print the commands; run nothing")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only failures")
    args = parser.parse_args(argv)
    files = [f.resolve() for f in args.files] or doc_files()
    if args.list:
        for path in files:
            for step in blocks(path):
                if isinstance(step, Command):
                    print(f"{_where(path)}:{step.line}: {step.text}")
        return 0
    results = check(files, verbose=not args.quiet)
    failed = [r for r in results if not r.ok]
    print(f"docs_check: {len(results) - len(failed)} of {len(results)} commands as documented")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
