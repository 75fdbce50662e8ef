"""One way to make an app method and its sync twin: from one operation.

An app method that runs one operation is declared once, as the function that builds the
operation (checking its arguments first, so a bad one fails before a connection is
taken)::

    @twin(transaction=True)
    def retry_job(self, ref: Reference | str) -> Operation[QueuedJob]:
        \"\"\"Run a failed job again ...\"\"\"
        return admin.retry_job_op(self.schema, ref)

    sync_retry_job = retry_job.sync

``await app.retry_job(ref)`` runs it on the async driver (``app.execute``),
``app.sync_retry_job(ref)`` on the sync one (``app.sync_execute``); both have the
builder's parameters, for callers and for mypy.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from types import MethodType
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from chancy_core.ops import Operation

__all__ = ["Executes", "SyncTwin", "Twin", "twin"]

P = ParamSpec("P")
R = TypeVar("R")


class Executes(Protocol):
    """What runs operations: the app (its two drivers)."""

    async def execute(self, op: Operation[R], *, transaction: bool = False) -> R:
        """Run an operation (see :meth:`Chancy.execute`)."""

    def sync_execute(self, op: Operation[R], *, transaction: bool = False) -> R:
        """Run an operation, blocking (see :meth:`Chancy.sync_execute`)."""


A = TypeVar("A", bound=Executes)


def _named(method: Callable[..., Any], build: Callable[..., Any], name: str, doc: str) -> None:
    """Give ``method`` a method's name and docstring, and the builder's parameters."""
    method.__module__ = build.__module__
    method.__name__ = name
    method.__qualname__ = f"{build.__qualname__.rpartition('.')[0]}.{name}".lstrip(".")
    method.__doc__ = doc
    signature = inspect.signature(build)  # without its return: the operation's
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        return_annotation=inspect.Signature.empty
    )


class Twin(Generic[A, P, R]):
    """The async app method running the operation that ``build`` makes; :attr:`sync` is
    its sync twin."""

    def __init__(self, build: Callable[Concatenate[A, P], Operation[R]], transaction: bool) -> None:
        async def method(app: A, /, *args: P.args, **kwargs: P.kwargs) -> R:
            return await app.execute(build(app, *args, **kwargs), transaction=transaction)

        def sync_method(app: A, /, *args: P.args, **kwargs: P.kwargs) -> R:
            return app.sync_execute(build(app, *args, **kwargs), transaction=transaction)

        name = build.__name__
        _named(method, build, name, build.__doc__ or "")
        _named(sync_method, build, f"sync_{name}", f"Sync twin of :meth:`{name}`.")
        self._method = method
        self.sync = SyncTwin(sync_method)
        """The sync twin (``sync_<name> = <name>.sync`` in the class body)."""

    @overload
    def __get__(
        self, app: None, owner: type[Any]
    ) -> Callable[Concatenate[A, P], Coroutine[Any, Any, R]]: ...

    @overload
    def __get__(self, app: A, owner: type[Any]) -> Callable[P, Coroutine[Any, Any, R]]: ...

    def __get__(self, app: A | None, owner: type[Any]) -> Any:
        # As a function's: the function on the class, a bound method on an instance.
        return self._method if app is None else MethodType(self._method, app)


class SyncTwin(Generic[A, P, R]):
    """The sync twin of a :class:`Twin`."""

    def __init__(self, method: Callable[Concatenate[A, P], R]) -> None:
        self._method = method

    @overload
    def __get__(self, app: None, owner: type[Any]) -> Callable[Concatenate[A, P], R]: ...

    @overload
    def __get__(self, app: A, owner: type[Any]) -> Callable[P, R]: ...

    def __get__(self, app: A | None, owner: type[Any]) -> Any:
        return self._method if app is None else MethodType(self._method, app)


def twin(
    *, transaction: bool = False
) -> Callable[[Callable[Concatenate[A, P], Operation[R]]], Twin[A, P, R]]:
    """Declare an app method (and, through ``.sync``, its sync twin) by the function that
    builds its operation; ``transaction``: run it in one transaction."""

    def declare(build: Callable[Concatenate[A, P], Operation[R]]) -> Twin[A, P, R]:
        return Twin(build, transaction)

    return declare
