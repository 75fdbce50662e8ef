"""Executors run a job's function; the worker picks one per queue.

* ``async`` and ``thread``: coroutine functions run on the worker's event
  loop, plain functions in a thread pool bounded by the queue's concurrency.
  Either name runs either kind of function correctly and never blocks the
  loop; pick the one that says what the queue's jobs are.
* ``process``: functions run in a pool of child processes (coroutine
  functions get their own event loop there); a crashed child fails its job
  and is replaced.

Limits: the worker enforces ``Limit.Type.TIME`` by cancelling the job, which
each executor honours: async cancels the task, process kills the child, and
thread abandons the thread (Python cannot kill a thread: it keeps running in
the background until it returns, but the job is failed and its slot freed at
the deadline). ``Limit.Type.MEMORY`` is enforced by the process executor,
which samples the child's resident memory and kills it when over.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from functools import cache, partial
from typing import Any, Protocol

import anyio

from chancy_core.errors import JobCancelled, JobCrashed, MemoryLimitExceeded, TimeLimitExceeded
from chancy_core.job import QueuedJob, registered_jobs

__all__ = [
    "Executor",
    "JobCancelled",
    "JobCrashed",
    "MemoryLimitExceeded",
    "TimeLimitExceeded",
    "call_function",
    "is_async",
    "make_executor",
    "resolve_function",
    "wants_context",
]


class Executor(Protocol):
    """What the worker needs of an executor."""

    async def run(
        self,
        job: QueuedJob,
        func: Callable[..., Any],
        kwargs: dict[str, Any],
        started: Callable[[], None],
    ) -> Any:
        """Run ``func(**kwargs)`` for ``job``; return its result or raise its exception.

        Call ``started()`` when the function is dispatched (after waiting for a
        free thread or process): the job's time limit counts from then. Must
        stop promptly when cancelled (that is how time limits and cancellation
        work)."""
        ...

    def resize(self, concurrency: int) -> None:
        """Run up to ``concurrency`` jobs at once from now on (the queue was changed)."""
        ...

    async def aclose(self) -> None:
        """Release the executor's resources (threads, processes)."""
        ...


def resolve_function(name: str) -> Callable[..., Any]:
    """Import the function named ``module.qualname`` (registered ``@job`` functions first)."""
    if name in registered_jobs:
        return registered_jobs[name]
    return _import(name)


@cache
def _import(name: str) -> Callable[..., Any]:
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            target: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                continue
            raise
        try:
            for attr in parts[split:]:
                target = getattr(target, attr)
        except AttributeError:
            raise LookupError(f"{module_name} has no function {'.'.join(parts[split:])}") from None
        if not callable(target):
            raise LookupError(f"{name} is not callable")
        return target  # type: ignore[no-any-return]
    raise LookupError(f"no module of {name!r} can be imported")


def _signature_wants_context(func: Callable[..., Any]) -> bool:
    try:
        return "job_context" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


_cached_wants_context = cache(_signature_wants_context)
_cached_is_async = cache(inspect.iscoroutinefunction)


def wants_context(func: Callable[..., Any]) -> bool:
    """Whether ``func`` declares a ``job_context`` parameter (checked once per function)."""
    try:
        return _cached_wants_context(func)
    except TypeError:  # an unhashable callable object
        return _signature_wants_context(func)


def is_async(func: Callable[..., Any]) -> bool:
    """Whether ``func`` is a coroutine function (checked once per function)."""
    try:
        return _cached_is_async(func)
    except TypeError:
        return inspect.iscoroutinefunction(func)


def call_function(
    func: Callable[..., Any], kwargs: dict[str, Any], job: QueuedJob | None
) -> Callable[[], Any]:
    """A no-argument callable that calls ``func`` with the job's kwargs (and the job
    itself as ``job_context`` if the function declares that parameter)."""
    if job is not None and wants_context(func):
        return partial(func, **kwargs, job_context=job)
    return partial(func, **kwargs)


async def _await(awaitable: Any) -> Any:
    return await awaitable


class LocalExecutor:
    """The ``async`` and ``thread`` executors: coroutine functions run on the worker's
    loop, plain functions in a thread pool bounded by the queue's concurrency.

    Both names dispatch on the kind of function, so neither can block the loop.
    A thread cannot be killed: at a time limit or cancellation the job fails and
    its slot is freed, but the thread runs on until the function returns.
    """

    def __init__(self, concurrency: int, options: dict[str, Any]) -> None:
        self.limiter = anyio.CapacityLimiter(concurrency)

    async def run(
        self,
        job: QueuedJob,
        func: Callable[..., Any],
        kwargs: dict[str, Any],
        started: Callable[[], None],
    ) -> Any:
        call = call_function(func, kwargs, job)
        started()
        if is_async(func):
            return await call()
        result = await anyio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=self.limiter)
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            result = await result
        return result

    def resize(self, concurrency: int) -> None:
        self.limiter.total_tokens = concurrency

    async def aclose(self) -> None:
        return None


def make_executor(kind: str, concurrency: int, options: dict[str, Any]) -> Executor:
    """Build the executor a queue names."""
    if kind == "process":
        from chancy_core.executors.process import ProcessExecutor

        return ProcessExecutor(concurrency, options)
    return LocalExecutor(concurrency, options)
