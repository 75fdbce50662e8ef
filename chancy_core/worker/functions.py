"""Which function a job names, and whether this worker may run it (the allow-list)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from chancy_core.errors import JobNotAllowedError
from chancy_core.executors import resolve_function
from chancy_core.job import registered_jobs

__all__ = ["FunctionResolver", "accepts", "signature_of"]


class FunctionResolver:
    """Resolves job function names under an allow-list, checking each name once.

    ``allow=None`` allows any importable function. Otherwise the name must be under an
    allowed module prefix *before* anything is imported (or registered with ``@job``),
    and the function found must be defined under one too: ``myapp.tasks.os`` is the
    ``os`` module that ``myapp.tasks`` imported, and ``os.system`` is not allowed
    because of it."""

    def __init__(self, allow: Sequence[str] | None) -> None:
        self.allow = None if allow is None else tuple(allow)
        #: Allowed functions by name. Owned by the runner tasks (the event loop's thread).
        self._checked: dict[str, Callable[..., Any]] = {}

    def resolve(self, name: str) -> Callable[..., Any]:
        """The function ``name`` names; raises if it is not allowed or cannot be imported."""
        func = self._checked.get(name)
        if func is not None:
            return func
        allow = self.allow
        if allow is None or name in registered_jobs:
            func = resolve_function(name)
        else:
            shown = ", ".join(allow) or "none"
            if not any(name.startswith(prefix + ".") for prefix in allow):
                raise JobNotAllowedError(
                    f"this worker may not run {name}: it is not under an allowed module"
                    f" prefix ({shown}) nor registered with @job. Add its module to the"
                    " worker's allow-list"
                )
            func = resolve_function(name)
            module = getattr(func, "__module__", None) or ""
            if not any(module == prefix or module.startswith(prefix + ".") for prefix in allow):
                raise JobNotAllowedError(
                    f"this worker may not run {name}: it is {module or '?'}."
                    f"{getattr(func, '__qualname__', '?')}, which is not defined under an"
                    f" allowed module prefix ({shown}); a module's imports are not allowed"
                    " with it"
                )
        self._checked[name] = func
        return func


def accepts(func: Callable[..., Any], kwargs: dict[str, Any]) -> bool:
    """Whether ``func`` can be called with ``kwargs`` (and maybe ``job_context``)."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return True
    if "job_context" in signature.parameters:
        kwargs = {**kwargs, "job_context": None}
    try:
        signature.bind(**kwargs)
    except TypeError:
        return False
    return True


def signature_of(func: Callable[..., Any]) -> str:
    """``func``'s signature as text, for error messages."""
    try:
        return str(inspect.signature(func))
    except (TypeError, ValueError):
        return "(...)"
