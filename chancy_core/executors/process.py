"""The ``process`` executor: a pool of child processes, one job at a time each.

Each child imports and runs the function itself (the worker has already
checked it is allowed). The worker kills a child to stop its job (time limit,
cancellation, shutdown) or when its resident memory passes the job's
``Limit.Type.MEMORY``; a child that dies is replaced, and the pool survives.

Options (``Queue.executor_options``): ``start_method`` (``"spawn"`` by
default, or ``"forkserver"``/``"fork"``), ``memory_check_interval`` (seconds
between memory samples, default 0.05) and ``max_tasks_per_child`` (replace a
child after that many jobs; default unlimited).
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import os
import pickle
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import anyio

from chancy_core.executors import (
    JobCrashed,
    MemoryLimitExceeded,
    call_function,
    resolve_function,
)
from chancy_core.job import Limit, QueuedJob

__all__ = ["ProcessExecutor", "RemoteError"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class RemoteError(Exception):
    """An exception raised in a child that could not be sent back as itself."""


def _child_main(conn: Connection) -> None:
    """The loop of one child: receive a job, run it, send back the outcome."""
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        func_name, kwargs, job = message
        try:
            func = resolve_function(func_name)
            call = call_function(func, kwargs, job)
            result = asyncio.run(call()) if inspect.iscoroutinefunction(func) else call()
            try:
                conn.send(("ok", result))
            except (pickle.PicklingError, TypeError, AttributeError):
                conn.send(("ok", None))
        except BaseException as exc:
            text = "".join(traceback.format_exception(exc))
            try:
                conn.send(("error", exc, text))
            except (pickle.PicklingError, TypeError, AttributeError):
                conn.send(("error", RemoteError(f"{type(exc).__name__}: {exc}"), text))


def _rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (Linux /proc), 0 if unknown."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class _Child:
    def __init__(self, ctx: Any) -> None:
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_child_main, args=(child_conn,), daemon=True)
        self.process.start()
        child_conn.close()
        self.jobs = 0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class ProcessExecutor:
    """Runs jobs in a pool of child processes of the queue's concurrency."""

    def __init__(self, concurrency: int, options: dict[str, Any]) -> None:
        self.ctx = multiprocessing.get_context(options.get("start_method", "spawn"))
        self.check_interval = float(options.get("memory_check_interval", 0.05))
        self.max_tasks = options.get("max_tasks_per_child")
        self.idle: list[_Child] = []
        self.busy: set[_Child] = set()
        self.limiter = anyio.CapacityLimiter(concurrency)

    async def run(self, job: QueuedJob, func: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        memory = min(
            (lim.value for lim in job.limits if lim.type_ is Limit.Type.MEMORY), default=None
        )
        async with self.limiter:
            child = (
                self.idle.pop() if self.idle else await anyio.to_thread.run_sync(_Child, self.ctx)
            )
            self.busy.add(child)
            healthy = False
            try:
                child.conn.send((job.func, kwargs, job))
                while True:
                    with anyio.move_on_after(self.check_interval if memory else None):
                        await anyio.wait_readable(child.conn.fileno())
                        break
                    if memory and _rss(child.process.pid) > memory:
                        raise MemoryLimitExceeded(
                            f"job {job.id} used more than its memory limit of {memory} bytes;"
                            " its process was killed"
                        )
                try:
                    outcome = child.conn.recv()
                except (EOFError, OSError):
                    await anyio.to_thread.run_sync(child.process.join, 5)
                    raise JobCrashed(
                        f"the process running job {job.id} exited unexpectedly (exit code"
                        f" {child.process.exitcode}); a new one replaces it"
                    ) from None
                healthy = True
            finally:
                self.busy.discard(child)
                child.jobs += 1
                if healthy and (self.max_tasks is None or child.jobs < self.max_tasks):
                    self.idle.append(child)
                else:
                    child.kill()
        if outcome[0] == "ok":
            return outcome[1]
        error: BaseException = outcome[1]
        error.__notes__ = [outcome[2]]  # the child's traceback, stored as the job's error
        raise error

    async def aclose(self) -> None:
        for child in [*self.idle, *self.busy]:
            child.kill()
        self.idle.clear()
        self.busy.clear()
