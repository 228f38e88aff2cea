"""The import-layer contract, checked on the source with `ast` (and once at run time).

* `hpcbatch/core/*` is pure: the standard library and `hpcbatch.core` only.
* Only `hpcbatch/store/*` touches SQLite or PostgreSQL, only `hpcbatch/transport/*` asyncssh,
  only `hpcbatch/dashboard/*` textual.
* The dashboard talks to the controller through its API only: it imports no
  controller, store, transport or sandbox module (nor asyncssh, aiosqlite, asyncpg,
  pydantic).
* The host agent is uploaded and run on its own: the standard library only.
* Direction between packages: the store and the transport never import the
  controller; the controller never imports the dashboard.
* No import cycles between modules (a split that needs one is the wrong cut).
* The thin client and the CLI load no heavy package at import time, so
  `hpcbatch submit` starts fast.
* Every module has a docstring.

Every import counts: `import`, `from ... import`, relative imports, imports in
functions and under `if TYPE_CHECKING:`, and `importlib.import_module("...")`
with a literal name. Only the "at import time" rules look at where it is.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import hpcbatch

PACKAGE_DIR = Path(hpcbatch.__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
HEAVY = ("pydantic", "asyncssh", "aiosqlite", "asyncpg", "textual")
STDLIB = frozenset(sys.stdlib_module_names)


@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name
    line: int
    eager: bool  # runs when the importing module is imported (not in a function, not TYPE_CHECKING)
    names: tuple[str, ...] = ()  # `from module import a, b`: a and b may be modules too

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    def __str__(self) -> str:
        return f"{self.module} (line {self.line}{'' if self.eager else ', lazy'})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def collect_imports(source: str, name: str, is_package: bool = False) -> list[Import]:
    """Every import in `source`, the source of module `name`, as absolute names."""
    package = name if is_package else name.rpartition(".")[0]
    found: list[Import] = []

    def resolve(level: int, module: str | None) -> str:
        if not level:
            return module or ""
        base = package.split(".") if package else []
        if level > 1:
            base = base[: len(base) - (level - 1)]
        return ".".join([*base, *([module] if module else [])])

    def visit(node: ast.AST, eager: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, node.lineno, eager) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node.level, node.module)
            found.append(Import(base, node.lineno, eager, tuple(a.name for a in node.names)))
            if node.module is None:  # `from . import x`: x may be a module
                found.extend(Import(f"{base}.{a.name}", node.lineno, eager) for a in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.append(Import(node.args[0].value, node.lineno, eager))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            eager = False
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, eager)
            visit(node.test, eager)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, eager)

    visit(ast.parse(source), True)
    return found


MODULES: dict[str, Path] = {
    module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py")) if "__pycache__" not in p.parts
}
IMPORTS: dict[str, list[Import]] = {
    name: collect_imports(path.read_text(), name, path.name == "__init__.py")
    for name, path in MODULES.items()
}


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def is_stdlib(imp: Import) -> bool:
    return imp.top in STDLIB


def violations(modules: list[str], bad: Callable[[Import], bool]) -> dict[str, list[str]]:
    """For each module with imports that are `bad`, those imports."""
    found = {m: [str(i) for i in IMPORTS[m] if bad(i)] for m in modules}
    return {m: v for m, v in found.items() if v}


def rel(module: str) -> str:
    return str(MODULES[module].relative_to(REPO_ROOT))


# --------------------------------------------------------------------------- the collector


def test_collector_sees_every_kind_of_import() -> None:
    source = textwrap.dedent(
        """
        import os, json as j
        import a.b.c
        from . import sibling
        from .. import other
        from ..pkg.mod import thing
        from .mod import x
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            import typed_only
        try:
            import optional
        except ImportError:
            pass
        def f():
            import lazy
            from late import y
            return importlib.import_module("dynamic")
        class C:
            import in_class
            def m(self):
                __import__("dunder")
        """
    )
    got = {i.module: i.eager for i in collect_imports(source, "hpcbatch.sub.mod")}
    assert got == {
        "os": True,
        "json": True,
        "a.b.c": True,
        "hpcbatch.sub": True,
        "hpcbatch.sub.sibling": True,
        "hpcbatch": True,
        "hpcbatch.other": True,
        "hpcbatch.pkg.mod": True,
        "hpcbatch.sub.mod": True,
        "typing": True,
        "typed_only": False,
        "optional": True,
        "lazy": False,
        "late": False,
        "dynamic": False,
        "in_class": True,
        "dunder": False,
    }


def test_collector_resolves_relative_imports_in_a_package() -> None:
    got = [i.module for i in collect_imports("from .states import X\n", "hpcbatch.core", True)]
    assert got == ["hpcbatch.core.states"]


def test_the_package_is_found() -> None:
    assert "hpcbatch.core.scheduler" in MODULES
    assert "hpcbatch.transport.agent.hpcbatch_agent" in MODULES
    assert "hpcbatch" in MODULES
    # The rules below are not vacuous: known imports are seen.
    assert any(i.module == "asyncssh" and i.eager for i in IMPORTS["hpcbatch.transport.link"])
    assert any(i.module == "aiosqlite" for i in IMPORTS["hpcbatch.store.database"])
    assert any(i.module == "asyncpg" for i in IMPORTS["hpcbatch.store.postgres"])
    assert any(i.module == "asyncio" and not i.eager for i in IMPORTS["hpcbatch.cli.main"])


# --------------------------------------------------------------------------- the rules


def test_core_imports_only_stdlib_and_core() -> None:
    core = [m for m in MODULES if within(m, "hpcbatch.core")]
    assert core
    bad = violations(core, lambda i: not (is_stdlib(i) or within(i.module, "hpcbatch.core")))
    assert not bad, f"hpcbatch.core must import only the standard library and itself: {bad}"


@pytest.mark.parametrize(
    ("packages", "owner"),
    [
        (("aiosqlite", "sqlite3", "asyncpg"), "hpcbatch.store"),
        (("asyncssh",), "hpcbatch.transport"),
        (("textual",), "hpcbatch.dashboard"),
    ],
    ids=["sqlite", "asyncssh", "textual"],
)
def test_only_one_package_imports(packages: tuple[str, ...], owner: str) -> None:
    others = [m for m in MODULES if not within(m, owner)]
    bad = violations(others, lambda i: i.top in packages)
    assert not bad, f"only {owner} may import {', '.join(packages)}: {bad}"


def test_dashboard_uses_only_the_api() -> None:
    dash = [m for m in MODULES if within(m, "hpcbatch.dashboard")]
    assert len(dash) >= 5
    internals = ("hpcbatch.controller", "hpcbatch.store", "hpcbatch.transport", "hpcbatch.sandbox")
    bad = violations(
        dash,
        lambda i: (
            any(within(i.module, p) for p in internals)
            or i.top in ("asyncssh", "aiosqlite", "sqlite3", "asyncpg", "pydantic")
        ),
    )
    assert not bad, f"the dashboard talks to the controller's API only: {bad}"
    assert any(i.top == "textual" for m in dash for i in IMPORTS[m])


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("hpcbatch.store", "hpcbatch.controller"),
        ("hpcbatch.transport", "hpcbatch.controller"),
        ("hpcbatch.controller", "hpcbatch.dashboard"),
    ],
    ids=["store-not-controller", "transport-not-controller", "controller-not-dashboard"],
)
def test_packages_depend_one_way(importer: str, imported: str) -> None:
    """The controller is built on the store and the transport, which know nothing of it;
    the dashboard is a client of the controller's API, which knows nothing of it."""
    modules = [m for m in MODULES if within(m, importer)]
    assert modules
    bad = violations(modules, lambda i: within(i.module, imported))
    assert not bad, f"{importer} must not import {imported}: {bad}"


def module_graph() -> dict[str, set[str]]:
    """module -> the hpcbatch modules it imports, every import counted (lazy and
    TYPE_CHECKING ones too: a type-only cycle is still two modules that cannot be
    read apart). `from pkg import name` counts `pkg.name` where that is a module.
    An import of a module's own package is left out: the package's `__init__` runs
    first whatever the order."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, imports in IMPORTS.items():
        for imp in imports:
            for target in (imp.module, *(f"{imp.module}.{n}" for n in imp.names)):
                while target and target not in MODULES:
                    target = target.rpartition(".")[0]
                if target and target != m and not m.startswith(target + "."):
                    graph[m].add(target)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = {stack.pop()}
            while v not in component:
                component.add(stack.pop())
            if len(component) > 1:
                cycles.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _describe(cycles: list[frozenset[str]]) -> str:
    return "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def test_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e", "d"}}
    assert import_cycles(graph) == [frozenset({"a", "b", "c"})]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_module_graph_counts_every_kind_of_import() -> None:
    graph = module_graph()
    assert "hpcbatch.core.fairshare" in graph["hpcbatch.core.scheduler"]  # from pkg import mod
    assert "hpcbatch.core.placement" in graph["hpcbatch.core.reasons"]  # under TYPE_CHECKING


def test_no_import_cycles() -> None:
    """No module imports itself through others (split by responsibility instead)."""
    cycles = import_cycles(module_graph())
    assert not cycles, f"import cycles: {_describe(cycles)}"


def test_agent_imports_only_stdlib() -> None:
    agent = [m for m in MODULES if within(m, "hpcbatch.transport.agent")]
    assert len(agent) >= 5
    bad = violations(
        agent, lambda i: not (is_stdlib(i) or within(i.module, "hpcbatch.transport.agent"))
    )
    assert not bad, f"the host agent runs standalone on hosts, stdlib only: {bad}"


def test_agent_archive_holds_every_agent_module() -> None:
    """The zipapp uploaded to hosts must carry every module the agent imports."""
    import io
    import zipfile

    from hpcbatch.transport.agent_archive import archive

    names = set(zipfile.ZipFile(io.BytesIO(archive())).namelist())
    for m in MODULES:
        if within(m, "hpcbatch.transport.agent") and m != "hpcbatch.transport.agent":
            assert f"{m.replace('.', '/')}.py" in names, m
    assert archive() == archive()  # deterministic: its hash names the uploaded file


def test_client_imports_nothing_heavy() -> None:
    bad = violations(["hpcbatch.client"], lambda i: i.top in HEAVY)
    assert not bad, f"hpcbatch.client must stay light: {bad}"


def test_cli_imports_nothing_heavy_at_import_time() -> None:
    cli = [m for m in MODULES if within(m, "hpcbatch.cli")]
    assert cli
    bad = violations(cli, lambda i: i.eager and i.top in HEAVY)
    assert not bad, f"hpcbatch.cli may import {', '.join(HEAVY)} only inside functions: {bad}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_has_docstring(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text())
    doc = ast.get_docstring(tree)
    assert doc and doc.strip(), f"{rel(name)} has no module docstring"


# --------------------------------------------------------------------------- at run time

_PROBE = """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.mark.parametrize(
    "modules",
    [
        ("hpcbatch.cli.main", "hpcbatch.core.directives", "hpcbatch.client"),
        ("hpcbatch.cli.submit", "hpcbatch.cli.show", "hpcbatch.cli.logs", "hpcbatch.cli.format"),
    ],
    ids=["main", "thin-commands"],
)
def test_cli_import_loads_no_heavy_module(modules: tuple[str, ...]) -> None:
    heavy = (*HEAVY, "asyncio")
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=heavy), *modules],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = json.loads(out.stdout)
    assert loaded == [], f"importing {', '.join(modules)} loads {', '.join(loaded)}"


def test_submit_path_skips_slow_standard_modules() -> None:
    """`hpcbatch submit` start-up: the modules its path imports load none of the
    standard library's slow starters (typing ~4 ms, socket ~3 ms, argparse,
    dataclasses and pathlib more); see docs/performance.md."""
    slow = ("typing", "socket", "argparse", "dataclasses", "pathlib", "inspect")
    probe = _PROBE.replace("import json, sys", "import sys").replace(
        "print(json.dumps(sorted(", "print(repr(sorted("
    )
    out = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            probe.format(heavy=slow),
            "hpcbatch.cli.main",
            "hpcbatch.cli.submit",
            "hpcbatch.client",
        ],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "[]", f"the submit path loads {out.stdout.strip()}"


def test_quick_submit_path_loads_only_what_it_sends_with() -> None:
    """The launcher's `hpcbatch submit` (`cli.quick`, without `site`): not `json` and
    the `re`, `enum`, `functools` and `collections` it pulls in, nor the option
    parser (the controller parses); docs/performance.md."""
    slow = ("site", "json", "re", "enum", "functools", "collections", "typing", "socket",
            "hpcbatch.core.directives", "hpcbatch.client", "hpcbatch.cli.main")  # fmt: skip
    probe = _PROBE.replace("import json, sys", "import sys").replace(
        "print(json.dumps(sorted(", "print(repr(sorted("
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", probe.format(heavy=slow), "hpcbatch.cli.quick"],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "[]", f"the quick submit path loads {out.stdout.strip()}"
