"""scripts/docs_check.py's reading of the docs: which blocks run, and what each must do.

Running them (against `hpcbatch demo`) is tests/integration/test_docs.py.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]


def docs_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_check", REPO_ROOT / "scripts/docs_check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_blocks_marked_runnable_and_nothing_else(tmp_path: Path) -> None:
    dc = docs_check()
    doc = tmp_path / "doc.md"
    doc.write_text(
        "intro\n"
        "```sh\nhpcbatch not-marked\n```\n"
        "<!-- runnable -->\n"
        "```toml\n# sim.toml\nname = 'sim'\n```\n"
        "<!-- runnable -->\n"
        "```console\n"
        "$ hpcbatch submit --wrap 'echo a # b'   # \"Submitted job 3\"\n"
        "# a comment line\n"
        "\n"
        "hpcbatch run \\\n  -N 2 hostname\n"
        "hpcbatch submit --gres=gpu:99 --wrap true   # refused at submit\n"
        "```\n"
    )
    steps = dc.blocks(doc)
    assert [type(s).__name__ for s in steps] == ["FileBlock", "Command", "Command", "Command"]
    file_block, wrap, run, refused = steps
    assert (file_block.name, file_block.line) == ("sim.toml", 7)
    assert wrap.text.startswith("hpcbatch submit --wrap 'echo a # b'")
    assert (wrap.line, wrap.expect, wrap.must_fail) == (12, "Submitted job 3", False)
    assert (run.text, run.line) == ("hpcbatch run -N 2 hostname", 15)
    assert refused.must_fail and not run.must_fail


def test_the_docs_have_runnable_examples() -> None:
    dc = docs_check()
    commands = [
        step for path in dc.doc_files() for step in dc.blocks(path) if isinstance(step, dc.Command)
    ]
    where = {step.path.name for step in commands}
    assert {"README.md", "user-guide.md"} <= where
    assert len(commands) >= 25
    assert any(step.must_fail for step in commands)
