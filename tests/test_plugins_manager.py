"""The plugin manager: discovery through entry points, explicit plugins, validation, hooks.

Discovery is real: each test that needs an installed plugin writes a distribution
(``*.dist-info`` with an ``entry_points.txt`` in group ``chancy``) and its module into a
temporary folder, which is what ``pip install`` leaves behind, and makes that folder the
only one on ``sys.path`` that holds distributions.
"""

from __future__ import annotations

import importlib
import logging
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from chancy_core import Chancy, Job, hookimpl
from chancy_core.errors import PluginError
from chancy_core.migrations import Migration, MigrationSet
from chancy_core.plugins import AUTOLOAD_ENV, build_plugin_manager, call_event, registered

DSN = "postgresql://h/db"  # never connected to by the tests without the db mark

PLUGIN_SOURCE = '''
from chancy_core import hookimpl


class {cls}:
    """Tags every pushed job, so a test can see it ran."""

    @hookimpl
    def chancy_before_push(self, jobs):
        for i, job in enumerate(jobs):
            jobs[i] = job.with_meta({{**job.meta, "discovered": True}})
'''


@pytest.fixture
def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """``install_plugin(name, source=..., target=...)`` installs a plugin distribution whose
    entry point ``name`` names ``target`` in a fresh module; returns the module's name."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    # Discover only what the test installs, not the plugins of the shared environment.
    isolated = [str(tmp_path), *(p for p in sys.path if "site-packages" not in p)]
    monkeypatch.setattr(sys, "path", isolated)

    def install(name: str, source: str | None = None, target: str = "DiscoveredPlugin") -> str:
        module = f"chancy_test_plugin_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{module}.py").write_text(
            textwrap.dedent(source) if source else PLUGIN_SOURCE.format(cls="DiscoveredPlugin")
        )
        dist = tmp_path / f"{module}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[chancy]\n{name} = {module}:{target}\n")
        importlib.invalidate_caches()
        monkeypatch.delitem(sys.modules, module, raising=False)
        return module

    return install


def plugin_names(app: Chancy) -> list[str]:
    return [name for name, _ in registered(app.plugins)]


class Tagger:
    """An explicit plugin that tags pushed jobs under its own meta key."""

    name = "tagger"

    @hookimpl
    def chancy_before_push(self, app: Chancy, jobs: list[Job]) -> None:
        for i, job in enumerate(jobs):
            jobs[i] = job.with_meta({**job.meta, "tagger": {"seen_by": app.schema.prefix}})


# --- discovery ------------------------------------------------------------------------------


def test_installed_plugin_is_discovered_through_its_entry_point(install_plugin):
    install_plugin("discovered")
    app = Chancy(DSN)
    assert plugin_names(app) == ["discovered"]


def test_autoload_plugins_false_skips_discovery(install_plugin):
    install_plugin("discovered")
    assert plugin_names(Chancy(DSN, autoload_plugins=False)) == []


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_disable_autoload_env_skips_discovery(install_plugin, monkeypatch, value):
    install_plugin("discovered")
    monkeypatch.setenv(AUTOLOAD_ENV, value)
    assert plugin_names(Chancy(DSN)) == []


def test_autoload_plugins_true_discovers_even_when_the_env_disables_it(install_plugin, monkeypatch):
    install_plugin("discovered")
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert plugin_names(Chancy(DSN, autoload_plugins=True)) == ["discovered"]


def test_explicit_plugin_replaces_a_discovered_one_of_the_same_name(install_plugin):
    install_plugin("tagger")
    explicit = Tagger()
    app = Chancy(DSN, plugins=[explicit])
    assert plugin_names(app) == ["tagger"]
    assert app.plugins.get_plugin("tagger") is explicit


def test_explicit_instance_of_a_discovered_class_replaces_it_under_any_name(install_plugin):
    module = install_plugin("discovered")
    discovered_class = importlib.import_module(module).DiscoveredPlugin
    explicit = discovered_class()
    app = Chancy(DSN, plugins=[explicit])
    assert plugin_names(app) == ["discoveredplugin"]
    assert len(app.plugins.hook.chancy_before_push.get_hookimpls()) == 1


def test_a_plugin_that_fails_to_load_raises_plugin_error_saying_how_to_skip_it(install_plugin):
    install_plugin("broken", source="raise RuntimeError('oops')\n")
    with pytest.raises(PluginError, match=rf"'broken'.*oops.*{AUTOLOAD_ENV}=1"):
        Chancy(DSN)


# --- explicit plugins ---------------------------------------------------------------------


def test_explicit_plugins_are_registered_by_name():
    app = Chancy(DSN, plugins=[Tagger()])
    assert plugin_names(app) == ["tagger"]


def test_plugin_without_a_name_is_registered_under_its_class_name_in_lowercase():
    class Unnamed:
        @hookimpl
        def chancy_before_push(self, jobs: list[Job]) -> None:
            pass

    assert plugin_names(Chancy(DSN, plugins=[Unnamed()])) == ["unnamed"]


def test_the_same_plugin_given_twice_raises_plugin_error():
    plugin = Tagger()
    with pytest.raises(PluginError, match=r"given twice.*give it once"):
        Chancy(DSN, plugins=[plugin, plugin])
    with pytest.raises(PluginError, match="given twice"):
        Chancy(DSN, plugins=[Tagger(), Tagger()])


def test_a_plugin_class_instead_of_an_instance_raises_plugin_error_showing_the_fix():
    with pytest.raises(PluginError, match=r"not the class Tagger: write Tagger\(\)"):
        Chancy(DSN, plugins=[Tagger])


def test_a_misspelled_hook_raises_plugin_error_at_start_up():
    class Misspelled:
        @hookimpl
        def chancy_befor_push(self, jobs: list[Job]) -> None:
            pass

    with pytest.raises(PluginError, match=r"unknown hook.*chancy_befor_push"):
        Chancy(DSN, plugins=[Misspelled()])


def test_a_hook_with_an_argument_the_hook_does_not_have_raises_plugin_error():
    class WrongArgument:
        @hookimpl
        def chancy_before_push(self, jobz: list[Job]) -> None:
            pass

    with pytest.raises(PluginError, match=r"(?s)wrongargument.*could not be registered.*jobz"):
        Chancy(DSN, plugins=[WrongArgument()])


def test_each_app_has_its_own_plugin_manager():
    with_plugin, without = Chancy(DSN, plugins=[Tagger()]), Chancy(DSN)
    assert plugin_names(with_plugin) == ["tagger"]
    assert plugin_names(without) == []
    assert with_plugin.plugins is not without.plugins


# --- event hooks -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_event_hook_that_raises_is_logged_and_the_others_still_run(caplog):
    seen: list[str] = []

    class Failing:
        @hookimpl
        async def chancy_worker_started(self, worker: Any) -> None:
            raise RuntimeError("plugin bug")

    class Recording:
        @hookimpl
        def chancy_worker_started(self, worker: Any) -> None:
            seen.append("sync")

    class AsyncRecording:
        @hookimpl
        async def chancy_worker_started(self, worker: Any) -> None:
            seen.append("async")

    pm = build_plugin_manager([Recording(), Failing(), AsyncRecording()], autoload=False)
    with caplog.at_level(logging.ERROR, logger="chancy_core.plugins"):
        await call_event(pm.hook.chancy_worker_started, worker=object())
    assert sorted(seen) == ["async", "sync"]
    assert "plugin failing failed in chancy_worker_started" in caplog.text
    assert "plugin bug" in caplog.text


# --- hooks the app calls ---------------------------------------------------------------------


@pytest.mark.db
@pytest.mark.anyio
async def test_before_push_hook_can_annotate_the_meta_of_every_pushed_job(database):
    async with Chancy(database, plugins=[Tagger()]) as app:
        one = await app.push(Job(func="m.f", meta={"mine": 1}))
        many = await app.push_many([Job(func="m.f"), Job(func="m.g")])
        async with await app.connect() as conn, conn.transaction():
            ex = await app.push_many_ex(conn, [Job(func="m.h")])
        got = await app.get_jobs([one, *many, *ex])
    assert got[0] is not None
    assert got[0].meta == {"mine": 1, "tagger": {"seen_by": "chancy_"}}
    assert all(j is not None and j.meta == {"tagger": {"seen_by": "chancy_"}} for j in got[1:])


@pytest.mark.db
def test_discovered_plugin_hooks_run_on_sync_push(install_plugin, database):
    install_plugin("discovered")
    with Chancy(database) as app:
        got = app.sync_get_job(app.sync_push(Job(func="m.f")))
    assert got is not None
    assert got.meta == {"discovered": True}


class ThingsPlugin:
    name = "things"

    @hookimpl
    def chancy_migrations(self) -> MigrationSet:
        return MigrationSet(
            "things",
            (
                Migration(1, "create", "CREATE TABLE {things} (id int PRIMARY KEY)"),
                Migration(2, "column", "ALTER TABLE {things} ADD COLUMN label text"),
            ),
        )


@pytest.mark.db
@pytest.mark.anyio
async def test_plugin_migrations_are_applied_under_the_plugins_own_component(database):
    async with Chancy(database, plugins=[ThingsPlugin()]) as app:
        assert await app.migrate() == ["things:0001_create", "things:0002_column"]
        assert await app.migrate() == []
    with psycopg.connect(database) as conn:
        ledger = conn.execute(
            "SELECT component, version, name FROM chancy_migrations"
            " WHERE component = 'things' ORDER BY version"
        ).fetchall()
        conn.execute("INSERT INTO chancy_things (id, label) VALUES (1, 'x')")
    assert ledger == [("things", 1, "create"), ("things", 2, "column")]
