"""docs/configuration.md names every option: of the app, queues, workers, each first-party
plugin, every environment variable and every command (no database)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from chancy_core import Chancy, Queue, Worker
from chancy_core.cli import build_parser
from chancy_core.plugins import build_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")


def parameters(func: object) -> list[str]:
    return [p for p in inspect.signature(func).parameters if p not in ("self", "chancy")]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("what", "names"),
    [
        ("Chancy", parameters(Chancy.__init__)),
        ("Worker", parameters(Worker.__init__)),
        ("Queue", [f.name for f in dataclasses.fields(Queue)]),
        ("Chancy attributes", ["require_declared_queues", "check_kwargs_on_push"]),
    ],
)
def test_every_option_of_the_core_is_documented(what: str, names: list[str]) -> None:
    assert [n for n in names if f"`{n}`" not in DOC] == [], what


def plugin_options() -> list[tuple[str, str]]:
    found = []
    for path in sorted(ROOT.glob("plugins/chancy-plugin-*/chancy_plugin_*/__init__.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            # The plugin classes: those with @hookimpl methods.
            if not isinstance(node, ast.ClassDef) or "hookimpl" not in ast.unparse(node):
                continue
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args.args[1:] + item.args.kwonlyargs
                    found += [(path.parent.name, a.arg) for a in args]
    return found


def test_every_option_of_every_plugin_is_documented() -> None:
    options = plugin_options()
    assert len({plugin for plugin, _ in options}) >= 6
    section = {}
    for plugin in {p for p, _ in options}:
        name = plugin.removeprefix("chancy_plugin_")
        match = re.search(rf"^### {name}:.*?(?=^### |^## |\Z)", DOC, re.MULTILINE | re.DOTALL)
        assert match, f"no section for the {name} plugin"
        section[plugin] = match.group(0)
    assert [(p, o) for p, o in options if o not in section[p]] == []


def test_every_environment_variable_is_documented() -> None:
    names = set()
    for path in [*ROOT.glob("chancy_core/**/*.py"), *ROOT.glob("plugins/*/chancy_plugin_*/*.py")]:
        text = path.read_text(encoding="utf-8")
        names |= set(re.findall(r'"(CHANCY_[A-Z_]+)"', text))
    assert {"CHANCY_DSN", "CHANCY_APP", "CHANCY_HOME", "CHANCY_METRICS_PORT"} <= names
    assert sorted(n for n in names if f"`{n}`" not in DOC) == []


def test_every_command_line_option_is_documented_or_in_the_help() -> None:
    parser = build_parser(build_plugin_manager(None, autoload=False))
    common = [a for a in parser._actions if a.option_strings and a.dest not in ("help", "version")]
    for action in common:
        assert any(f"`{o}" in DOC for o in action.option_strings), action.option_strings
