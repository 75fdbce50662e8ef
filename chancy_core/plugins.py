"""The plugin manager: one per :class:`~chancy_core.app.Chancy`, no globals.

Build order: the hook specifications, the core's defaults (``trylast``
fallbacks), plugins discovered through the ``chancy`` entry-point group
(unless ``autoload_plugins=False`` or ``CHANCY_DISABLE_PLUGIN_AUTOLOAD=1``),
then the plugins passed explicitly. An explicit plugin replaces a discovered
one of the same name; a name is never registered twice. Finally
``check_pending()`` makes a misspelled hook fail at start-up.

A plugin is any object (or module) with ``@hookimpl`` methods; its name is
its ``name`` attribute, else its class name in lowercase. An entry point may
name a class (instantiated without arguments) or an instance.
"""

from __future__ import annotations

import enum
import inspect
import logging
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

import pluggy

from chancy_core import hookspecs
from chancy_core.errors import JobCancelled, PluginError
from chancy_core.hooks import CORE_DEFAULTS, call_event, implemented
from chancy_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from chancy_core.hookspecs import WorkerHandle
    from chancy_core.job import QueuedJob

__all__ = [
    "ENTRY_POINT_GROUP",
    "RECOVERS_DEAD_WORKERS",
    "build_plugin_manager",
    "call_event",
    "implemented",
    "plugin_name",
    "plugin_options",
    "recovers_dead_workers",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "chancy"
AUTOLOAD_ENV = "CHANCY_DISABLE_PLUGIN_AUTOLOAD"


RECOVERS_DEAD_WORKERS = "recovers_dead_workers"
"""The plugin attribute that says a plugin puts back the jobs of dead workers: a plugin
with ``recovers_dead_workers = True`` (chancy-plugin-recovery) silences the worker's
start-up warning that no plugin does."""


def recovers_dead_workers(plugin: object) -> bool:
    """Whether ``plugin`` says it puts back the jobs of dead workers (see
    :data:`RECOVERS_DEAD_WORKERS`)."""
    return getattr(plugin, RECOVERS_DEAD_WORKERS, False) is True


def plugin_options(plugin: object) -> str:
    """A plugin's options, for people (the worker's start-up summary, ``chancy plugins``):
    its ``describe()`` if it has one, its own ``__repr__`` if it defines one, else its
    public attributes that look like settings, as ``name=value`` pairs."""
    describe = getattr(plugin, "describe", None)
    if callable(describe):
        try:
            text = describe()
        except Exception as exc:  # a summary never stops a worker
            return f"(describe() failed: {exc})"
        if isinstance(text, str):  # another protocol's describe() is not ours
            return text
    if type(plugin).__repr__ is not object.__repr__:
        return repr(plugin)
    try:
        options = {k: v for k, v in vars(plugin).items() if not k.startswith("_")}
    except TypeError:  # no __dict__ (slots, a module)
        return ""
    shown = ", ".join(f"{k}={_short(v)}" for k, v in options.items() if _is_option(v))
    return shown


_SCALARS = (int, float, str, bool, type(None), timedelta, enum.Enum)


def _is_option(value: object, depth: int = 0) -> bool:
    """Whether an attribute looks like an option (plain data, nested at most twice), not
    internal state (a registry, a random generator, a sample)."""
    if isinstance(value, _SCALARS):
        return True
    if depth >= 2:
        return False
    if isinstance(value, list | tuple | frozenset | set):
        return all(_is_option(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_option(v, depth + 1) for k, v in value.items())
    return False


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


class CoreDefaults:
    """The core's fallbacks for decision hooks; any plugin overrides them."""

    name = CORE_DEFAULTS

    @hookimpl(trylast=True)
    def chancy_elects_leader(self, worker: WorkerHandle) -> bool:
        return False

    @hookimpl(trylast=True)
    def chancy_retry_decision(
        self, worker: WorkerHandle, job: QueuedJob, error: BaseException
    ) -> datetime | bool:
        if isinstance(error, JobCancelled) or job.attempts >= job.max_attempts:
            return False
        return datetime.now(UTC)


def plugin_name(plugin: object) -> str:
    """The name a plugin is registered under."""
    name = getattr(plugin, "name", None)
    if isinstance(name, str) and name:
        return name
    if inspect.ismodule(plugin):
        return plugin.__name__
    return type(plugin).__name__.lower()


def build_plugin_manager(
    plugins: Sequence[object] | None, *, autoload: bool | None = None
) -> pluggy.PluginManager:
    """Build the plugin manager of one app (see the module docstring for the order)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(CoreDefaults(), name=CoreDefaults.name)
    explicit: dict[str, object] = {}
    for plugin in plugins or ():
        if inspect.isclass(plugin):
            raise PluginError(
                f"plugins=[...] takes plugin instances, not the class {plugin.__name__}:"
                f" write {plugin.__name__}()"
            )
        name = plugin_name(plugin)
        if name in explicit:
            raise PluginError(f"plugin {name!r} was given twice in plugins=[...]: give it once")
        explicit[name] = plugin
    if autoload is None:
        autoload = os.environ.get(AUTOLOAD_ENV, "") not in ("1", "true", "yes")
    if autoload:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in explicit or pm.has_plugin(ep.name):
                continue
            try:
                loaded = ep.load()
                if any(  # an explicit instance of it, under another name, replaces it too
                    p is loaded or (inspect.isclass(loaded) and isinstance(p, loaded))
                    for p in explicit.values()
                ):
                    continue
                pm.register(loaded() if inspect.isclass(loaded) else loaded, name=ep.name)
            except Exception as exc:
                raise PluginError(
                    f"the plugin {ep.name!r} ({ep.value}) could not be loaded: {exc}. Fix or"
                    f" uninstall it, or set {AUTOLOAD_ENV}=1 to skip discovery"
                ) from exc
    for name, plugin in explicit.items():
        if pm.has_plugin(name):
            pm.unregister(name=name)
        try:
            pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"plugin {name!r} could not be registered: {exc}") from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements an unknown hook: {exc}") from exc
    return pm


def registered(pm: pluggy.PluginManager) -> Iterable[tuple[str, object]]:
    """The registered plugins other than the core's defaults, by name."""
    for name, plugin in pm.list_name_plugin():
        if name != CoreDefaults.name:
            yield name, plugin
