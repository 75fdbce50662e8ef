"""The one place that calls plugin hooks.

Every call goes through pluggy's ``HookCaller`` machinery (``hook(...)`` or, for
one implementation at a time, the caller's ``_hookexec``), so pluggy's tracing
(``pm.enable_tracing()``, ``add_hookcall_monitoring``) sees each call.

* Event hooks (:func:`call_event`, :func:`call_sync_event`) are isolated: each
  implementation is called on its own, and one that raises is logged with its
  plugin's name and skipped; the others still run. Results that are awaitable are
  awaited (event hooks may be ``async def``).
* Decision hooks (:func:`decide`) stop at the first non-``None`` result; if an
  implementation raises, it is logged and the core's ``trylast`` default decides
  (:func:`decide_or`: a fixed safe answer, where the default is not the safe side).
* Collecting hooks (:func:`collect`) return every result; they are not isolated: an
  implementation that raises fails the call (a plugin's migrations that cannot be
  read must stop ``migrate()``).
* :class:`HookFlags` says, once per worker, which per-job hooks any plugin
  implements, so a hook nobody implements costs nothing per job.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

import pluggy

__all__ = [
    "CORE_DEFAULTS",
    "Guarded",
    "HookFlags",
    "call_event",
    "call_sync_event",
    "collect",
    "decide",
    "decide_or",
    "implemented",
    "results",
]

log = logging.getLogger(__name__)

#: The name the core's fallback implementations are registered under.
CORE_DEFAULTS = "chancy-core"


def implemented(hook: pluggy.HookCaller) -> bool:
    """Whether any plugin implements ``hook`` (so the caller can skip calling it)."""
    return bool(hook.get_hookimpls())


def _call_one(hook: pluggy.HookCaller, impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
    """Call one implementation through pluggy (traced); its result, or ``None``."""
    # Not firstresult: pluggy returns the list of non-None results (here 0 or 1).
    found = cast("list[Any]", hook._hookexec(hook.name, [impl], kwargs, False))
    return found[0] if found else None


def results(hook: pluggy.HookCaller, **kwargs: Any) -> Iterator[tuple[str, Any]]:
    """Call each implementation of a sync hook in pluggy's order, isolated; yield
    ``(plugin name, result)`` for each that returned something other than ``None``."""
    for impl in reversed(hook.get_hookimpls()):
        try:
            result = _call_one(hook, impl, kwargs)
        except Exception:
            _failed(hook, impl)
            continue
        if result is not None:
            yield impl.plugin_name, result


def call_sync_event(hook: pluggy.HookCaller, **kwargs: Any) -> None:
    """Call every implementation of a sync event hook; one that raises is logged and
    skipped."""
    for _ in results(hook, **kwargs):
        pass


async def call_event(hook: pluggy.HookCaller, **kwargs: Any) -> None:
    """Call every implementation of an event hook in pluggy's order, awaiting
    ``async def`` ones. One that raises is logged and skipped; the others still run."""
    for impl in reversed(hook.get_hookimpls()):
        try:
            result = _call_one(hook, impl, kwargs)
            if inspect.isawaitable(result):
                await result
        except Exception:
            _failed(hook, impl)


def decide(hook: pluggy.HookCaller, **kwargs: Any) -> Any:
    """Call a decision (``firstresult``) hook. If an implementation raises, it is logged
    and the core's default implementation decides alone."""
    try:
        return hook(**kwargs)
    except Exception:
        log.exception(
            "a plugin failed in %s; using the core's default",
            hook.name,
            extra={"hook": hook.name},
        )
    for impl in hook.get_hookimpls():
        if impl.plugin_name == CORE_DEFAULTS:
            return _call_one(hook, impl, kwargs)
    return None


def decide_or(hook: pluggy.HookCaller, if_raises: Any, **kwargs: Any) -> Any:
    """Call a decision (``firstresult``) hook. If an implementation raises, it is logged
    and ``if_raises`` is the answer (for a decision whose safe side is not the core's
    default, e.g. ``chancy_elects_leader``: wait for a leader)."""
    try:
        return hook(**kwargs)
    except Exception:
        log.exception(
            "a plugin failed in %s; answering %r (the safe side)",
            hook.name,
            if_raises,
            extra={"hook": hook.name},
        )
        return if_raises


def collect(hook: pluggy.HookCaller, **kwargs: Any) -> list[Any]:
    """Call a collecting hook: every implementation's non-``None`` result, in pluggy's
    order. Not isolated: an implementation that raises fails the call."""
    return cast("list[Any]", hook(**kwargs))


def _failed(hook: pluggy.HookCaller, impl: pluggy.HookImpl) -> None:
    log.exception(
        "plugin %s failed in %s; carrying on",
        impl.plugin_name,
        hook.name,
        extra={"plugin": impl.plugin_name, "hook": hook.name},
    )


@dataclass(frozen=True, slots=True)
class HookFlags:
    """Which per-job hooks have implementations, computed once when a worker starts."""

    starting: bool
    wrap: bool
    completed: bool

    @classmethod
    def of(cls, hook: Any) -> HookFlags:
        """The flags of a plugin manager's ``hook`` relay."""
        return cls(
            starting=implemented(hook.chancy_job_starting),
            wrap=implemented(hook.chancy_job_wrap),
            completed=implemented(hook.chancy_job_completed),
        )


class Guarded:
    """A plugin's ``chancy_job_wrap`` context manager, isolated.

    If entering or exiting it raises, the error is logged and the job goes on (a plugin
    never fails a job). Its exit never suppresses the job's exception: a wrapper whose
    ``__aexit__`` returns true cannot turn a failed attempt into a success."""

    __slots__ = ("cm", "entered", "plugin")

    def __init__(self, cm: AbstractAsyncContextManager[Any], plugin: str) -> None:
        self.cm = cm
        self.plugin = plugin
        self.entered = False

    async def __aenter__(self) -> None:
        try:
            await self.cm.__aenter__()
            self.entered = True
        except Exception:
            log.exception("plugin %s failed entering chancy_job_wrap; carrying on", self.plugin)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if not self.entered:
            return False
        try:
            suppress = await self.cm.__aexit__(exc_type, exc, tb)
        except Exception as raised:
            if raised is not exc:
                log.exception("plugin %s failed exiting chancy_job_wrap; carrying on", self.plugin)
            return False
        if suppress and exc is not None:
            log.warning(
                "plugin %s's chancy_job_wrap tried to suppress the job's %s; a wrapper cannot"
                " hide a failure, the attempt still fails",
                self.plugin,
                type(exc).__name__,
            )
        return False
