"""Every hook is documented: in its docstring and in docs/hooks.md (no database)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chancy_core import hookspecs

HOOKS_MD = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"


def declared() -> dict[str, Callable[..., Any]]:
    """Every function of chancy_core/hookspecs.py marked with @hookspec."""
    marker = f"{hookspecs.PROJECT}_spec"
    return {
        name: func
        for name, func in vars(hookspecs).items()
        if inspect.isfunction(func) and hasattr(func, marker)
    }


def sections() -> dict[str, str]:
    """docs/hooks.md split at its ``## `hook_name` `` headings."""
    text = HOOKS_MD.read_text(encoding="utf-8")
    parts = re.split(r"^## `([a-z_]+)`\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


HOOKS = sorted(declared())


def test_hookspecs_are_found() -> None:
    assert {"chancy_migrations", "chancy_job_completed", "chancy_retry_decision"} <= set(HOOKS)
    assert all(name.startswith("chancy_") for name in HOOKS)


def test_no_documented_hook_is_undeclared() -> None:
    stale = set(sections()) - set(HOOKS)
    assert not stale, f"docs/hooks.md documents hooks that no longer exist: {sorted(stale)}"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_docstring(name: str) -> None:
    func = declared()[name]
    doc = inspect.getdoc(func) or ""
    assert doc.strip(), f"hookspec {name} has no docstring: say when it is called and why"
    for param in inspect.signature(func).parameters:
        assert f":param {param}:" in doc, f"hookspec {name}: document `:param {param}:`"
    assert "Sync only" in doc or "async def" in doc, (
        f"hookspec {name}: say whether an implementation may be `async def` ('Sync only.'"
        " or 'May be ``async def``.')"
    )


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented_in_hooks_md(name: str) -> None:
    found = sections()
    assert name in found, f"docs/hooks.md has no '## `{name}`' section: add one"
    section = found[name]
    assert f"def {name}(" in section, f"docs/hooks.md, {name}: show its signature"
    opts = getattr(declared()[name], f"{hookspecs.PROJECT}_spec")
    expected = "yes" if opts.get("firstresult") else "no"
    assert re.search(rf"\*\*firstresult:\*\* {expected}\b", section), (
        f"docs/hooks.md, {name}: say '**firstresult:** {expected}'"
    )
    for label in ("**When:**", "**Sync or async:**", "**Where:**", "```python"):
        assert label in section, f"docs/hooks.md, {name}: missing {label}"
    assert f"| [`{name}`](#{name}) |" in HOOKS_MD.read_text(encoding="utf-8"), (
        f"docs/hooks.md: add {name} to the summary table"
    )


def test_hook_examples_use_only_the_worker_handle() -> None:
    """The examples in docs/hooks.md and docs/writing-plugins.md touch the worker only
    through :class:`~chancy_core.hookspecs.WorkerHandle` (nothing else of it is API)."""
    handle = {name for name in vars(hookspecs.WorkerHandle) if not name.startswith("_")}
    assert {"worker_id", "app", "is_leader", "set_leader"} <= handle
    docs = HOOKS_MD.parent
    for page in (HOOKS_MD, docs / "writing-plugins.md"):
        text = page.read_text(encoding="utf-8")
        blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
        used = {m for block in blocks for m in re.findall(r"\bworker\.([a-z_]+)", block)}
        assert used <= handle, f"{page.name}: not on WorkerHandle: {sorted(used - handle)}"
