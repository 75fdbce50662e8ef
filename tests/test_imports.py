"""No import cycle in chancy_core: each module imports alone, and the graph of the
imports run at import time (module level, outside ``if TYPE_CHECKING:``) is acyclic."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import chancy_core

ROOT = Path(chancy_core.__file__).parent


def modules() -> dict[str, Path]:
    found = {"chancy_core": ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix="chancy_core."):
        path = ROOT.joinpath(*info.name.split(".")[1:])
        found[info.name] = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
    return found


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports run when the module is imported: not in functions, not under TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)

    visit(tree.body)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for node in _runtime_imports(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t if t in known else node.module for t in targets]
            edges[name] |= {t for t in targets if t in known and t != name}
    return edges


def test_the_runtime_import_graph_has_no_cycle() -> None:
    edges = graph()
    assert "chancy_core.worker.worker" in edges and "chancy_core.hooks" in edges
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            walk(name, [name])


def test_hookspecs_and_plugins_do_not_import_the_worker() -> None:
    for name in ("chancy_core.hookspecs", "chancy_core.plugins", "chancy_core.hooks"):
        text = modules()[name].read_text()
        assert "chancy_core.worker" not in text, name


def test_each_module_imports_alone_in_a_fresh_interpreter() -> None:
    names = sorted(n for n in modules() if n != "chancy_core.__main__")
    script = (
        "import importlib, subprocess, sys\n"
        "for name in sys.argv[1:]:\n"
        "    r = subprocess.run([sys.executable, '-c', f'import {name}'], capture_output=True)\n"
        "    if r.returncode:\n"
        "        print(name, r.stderr.decode()[-500:])\n"
        "        sys.exit(1)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


#: What plugins and examples may import of the core: these modules' public names (those in
#: their ``__all__``). ``chancy_core.cli`` for the helpers that build plugins' own commands,
#: ``chancy_core.events`` for the notification protocol, ``chancy_core.connection`` for
#: connection deadlines, ``chancy_core.testing`` and ``chancy_core.concurrency`` for users.
PUBLIC = {
    "chancy_core",
    "chancy_core.cli",
    "chancy_core.concurrency",
    "chancy_core.connection",
    "chancy_core.errors",
    "chancy_core.events",
    "chancy_core.hookspecs",
    "chancy_core.migrations",
    "chancy_core.testing",
}


def test_plugins_reach_the_core_only_through_public_names() -> None:
    repo = ROOT.parent
    sources = [
        *repo.glob("plugins/chancy-plugin-*/chancy_plugin_*/**/*.py"),
        *repo.glob("examples/**/*.py"),
    ]
    assert len(sources) >= 7
    found: dict[str, set[str]] = {}
    for path in sources:
        where = str(path.relative_to(repo))
        for node in ast.walk(ast.parse(path.read_text())):
            imported: list[tuple[str, str | None]] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported = [(node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                imported = [(alias.name, None) for alias in node.names]
            for module, name in imported:
                if not module.startswith("chancy_core"):
                    continue
                if module not in PUBLIC:
                    found.setdefault(module, set()).add(where)
                elif name is not None and name not in importlib.import_module(module).__all__:
                    found.setdefault(f"{module}.{name}", set()).add(where)
    assert not found, found
