"""The ``process`` executor: a pool of child processes, one job at a time each.

Each child imports and runs the function itself (the worker has already
checked it is allowed). The worker kills a child to stop its job (time limit,
cancellation, shutdown) or when its resident memory passes the job's
``Limit.Type.MEMORY``; a child that dies is replaced, and the pool survives.

Options (``Queue.executor_options``): ``start_method`` (``"spawn"`` by
default, or ``"forkserver"``/``"fork"``), ``memory_check_interval`` (seconds
between memory samples, default 0.05) and ``max_tasks_per_child`` (replace a
child after that many jobs; default unlimited).

With ``spawn`` and ``forkserver`` each child imports the worker program's main
module (as ``__mp_main__``), as :mod:`multiprocessing` always does: a script
that starts a worker must do so under ``if __name__ == "__main__":``, or each
child starts another worker.

``CHANCY_PROCESS_INITIALIZER``: when this environment variable names an
importable no-argument callable (``module.name``), each child calls it once,
before its first job; a framework sets itself up there (``django.setup``, which
``manage.py chancy_worker`` sets for you). Children inherit the worker's
environment, so set it in the worker before it starts. If the initializer
raises, every job that child is given fails with its traceback.

A child that dies (``os._exit``, a signal, the kernel's out-of-memory killer)
fails its job with :class:`~chancy_core.errors.JobCrashed` saying how it
ended. A job's changes to ``job_context.meta`` in the child are sent back with its
outcome and applied to the worker's job, so they are saved as with the other
executors. Children ignore SIGINT and SIGTERM: the worker stops them. Killing and
reaping a child never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import anyio

from chancy_core.errors import JobCrashed, MemoryLimitExceeded, RemoteError
from chancy_core.executors import (
    UnsentResult,
    _await,
    call_function,
    is_async,
    resolve_function,
)
from chancy_core.job import Limit, QueuedJob, progress_sinks

__all__ = ["INITIALIZER_ENV", "ProcessExecutor", "RemoteError"]

INITIALIZER_ENV = "CHANCY_PROCESS_INITIALIZER"
"""Environment variable naming a callable each child runs once before its first job."""

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _dumps(value: Any) -> bytes | None:
    try:
        return pickle.dumps(value)
    except Exception:
        return None


#: Seconds between progress messages a child sends (the latest one is always sent before the
#: outcome); the worker coalesces its database writes on its own.
_PROGRESS_EVERY = 0.05


class _ProgressPipe:
    """The child's progress sink for one job: sends the latest value over the pipe, at most
    every ``_PROGRESS_EVERY`` seconds (a timer sends one held back); :meth:`flush` sends
    one still held back before the outcome."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()  # the job's thread and the timer both send
        self.sent_at = 0.0
        self.held: tuple[float, str | None] | None = None
        self.timer: threading.Timer | None = None

    def __call__(self, fraction: float, message: str | None) -> None:
        with self.lock:
            now = time.monotonic()
            if now - self.sent_at >= _PROGRESS_EVERY:
                self.sent_at = now
                self.held = None
                self.conn.send(("progress", fraction, message))
                return
            self.held = (fraction, message)
            if self.timer is None:
                self.timer = threading.Timer(_PROGRESS_EVERY, self.flush)
                self.timer.daemon = True
                self.timer.start()

    def flush(self) -> None:
        """Send the value held back, if any."""
        with self.lock:
            self.timer = None
            if self.held is not None:
                self.sent_at = time.monotonic()
                self.conn.send(("progress", *self.held))
                self.held = None

    def close(self) -> None:
        """Send the value held back and stop the timer (before the outcome is sent)."""
        timer = self.timer
        if timer is not None:
            timer.cancel()
        self.flush()


def _send_result(result: Any) -> tuple[Any, ...]:
    """The ``ok`` message: the result pickled, or why it cannot be."""
    try:
        return ("ok", pickle.dumps(result), None)
    except Exception as exc:
        return ("ok", None, f"{type(exc).__name__}: {exc}")


def _loads(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return pickle.loads(data)
    except Exception:
        return None


def _child_main(conn: Connection) -> None:
    """The loop of one child: receive a job, run it, send back the outcome.

    The result and the exception travel pickled on their own, so that one that cannot
    be pickled here or unpickled in the worker (an exception class with a custom
    ``__init__``) degrades to ``None`` or a :class:`RemoteError` instead of breaking
    the pipe.

    SIGINT and SIGTERM are ignored: a Ctrl-C or a SIGTERM to the whole process group
    reaches the worker too, which decides (drains, then kills what is left)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    failed_setup: tuple[Any, ...] | None = None
    initializer = os.environ.get(INITIALIZER_ENV)
    if initializer:
        try:
            resolve_function(initializer)()
        except BaseException as exc:
            text = "".join(traceback.format_exception(exc))
            summary = f"{INITIALIZER_ENV}={initializer} failed: {type(exc).__qualname__}: {exc}"
            failed_setup = ("error", _dumps(RemoteError(summary)), text, summary)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if message is None:
            return
        func_name, kwargs, job = message
        if failed_setup is not None:
            conn.send(failed_setup)
            continue
        outcome: tuple[Any, ...]
        pipe = _ProgressPipe(conn)
        if job is not None:
            progress_sinks[job.id] = pipe
        try:
            func = resolve_function(func_name)
            call = call_function(func, kwargs, job)
            result = asyncio.run(call()) if is_async(func) else call()
            if inspect.isawaitable(result):  # a plain function that returned a coroutine
                result = asyncio.run(_await(result))
            outcome = _send_result(result)
        except BaseException as exc:
            text = "".join(traceback.format_exception(exc))
            outcome = ("error", _dumps(exc), text, f"{type(exc).__qualname__}: {exc}")
        finally:
            if job is not None:
                progress_sinks.pop(job.id, None)
        pipe.close()
        # The job's meta as the function left it (it edits job_context.meta in place): the
        # worker saves it, as it does for the other executors.
        conn.send((*outcome, _dumps(job.meta) if job is not None else None))


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
        self.exitcode: int | None = None

    async def discard(self) -> None:
        """Kill the child and reap it, without blocking the event loop (shielded: this
        runs while the job's own scope is being cancelled). Idempotent."""
        if self.conn.closed:
            return
        with anyio.CancelScope(shield=True):
            if self.process.exitcode is None:
                self.process.kill()
            with anyio.move_on_after(5):
                delay = 0.001
                while self.process.is_alive():  # is_alive() reaps the child once it exits
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 0.05)
            self.conn.close()
            self.exitcode = self.process.exitcode
            if self.exitcode is not None:
                self.process.close()  # frees its resources; exitcode is kept above


class ProcessExecutor:
    """Runs jobs in a pool of child processes of the queue's concurrency."""

    def __init__(self, concurrency: int, options: dict[str, Any]) -> None:
        self.ctx = multiprocessing.get_context(options.get("start_method", "spawn"))
        self.check_interval = float(options.get("memory_check_interval", 0.05))
        self.max_tasks = options.get("max_tasks_per_child")
        self.idle: list[_Child] = []
        self.busy: set[_Child] = set()
        self.limiter = anyio.CapacityLimiter(concurrency)

    async def _take(self) -> _Child:
        while self.idle:
            child = self.idle.pop()
            if child.process.is_alive():
                return child
            await child.discard()  # died while idle (killed from outside)
        return await anyio.to_thread.run_sync(_Child, self.ctx)

    async def run(
        self,
        job: QueuedJob,
        func: Callable[..., Any],
        kwargs: dict[str, Any],
        started: Callable[[], None],
    ) -> Any:
        """Run ``func(**kwargs)`` in an idle (or new) child process; see :class:`Executor`."""
        memory = min(
            (lim.value for lim in job.limits if lim.type_ is Limit.Type.MEMORY), default=None
        )
        async with self.limiter:
            child = await self._take()  # starting a process does not count against the limit
            started()
            self.busy.add(child)
            healthy = False
            try:
                child.conn.send((job.func, kwargs, job))
                while True:  # progress messages, then the outcome
                    while True:
                        with anyio.move_on_after(self.check_interval if memory else None):
                            await anyio.wait_readable(child.conn.fileno())
                            break
                        if memory and _rss(child.process.pid) > memory:
                            raise MemoryLimitExceeded(
                                f"job {job.id} used more than its memory limit of {memory}"
                                f" bytes ({memory / 2**20:.0f} MiB); its process was killed"
                            )
                    try:
                        outcome = child.conn.recv()
                    except (EOFError, OSError):
                        await child.discard()
                        raise JobCrashed(
                            f"the process running job {job.id} exited unexpectedly"
                            f" ({_describe_exit(child.exitcode)}) without reporting an outcome;"
                            " a new process replaces it"
                        ) from None
                    if outcome[0] != "progress":
                        break
                    job.set_progress(outcome[1], outcome[2])
                healthy = True
            finally:
                self.busy.discard(child)
                child.jobs += 1
                if healthy and (self.max_tasks is None or child.jobs < self.max_tasks):
                    self.idle.append(child)
                else:
                    await child.discard()
        meta = _loads(outcome[-1])
        if isinstance(meta, dict) and meta != job.meta:
            job.meta.clear()  # the worker's copy of the job follows the child's
            job.meta.update(meta)
        if outcome[0] == "ok":
            if outcome[2] is not None:
                return UnsentResult(
                    f"the result could not be sent back from the job's process ({outcome[2]}):"
                    " return JSON-serializable data"
                )
            try:
                return pickle.loads(outcome[1])
            except Exception as exc:
                return UnsentResult(
                    f"the result could not be read back from the job's process"
                    f" ({type(exc).__name__}: {exc}): return JSON-serializable data"
                )
        error = _loads(outcome[1])
        if not isinstance(error, BaseException):
            error = RemoteError(outcome[3])
        error.add_note(f"in the job's process:\n{outcome[2].rstrip()}")
        raise error

    def resize(self, concurrency: int) -> None:
        """Run at most ``concurrency`` jobs at once from now on."""
        self.limiter.total_tokens = concurrency

    async def aclose(self) -> None:
        """Stop every child process."""
        children = [*self.idle, *self.busy]
        self.idle.clear()
        self.busy.clear()
        for child in children:
            await child.discard()


def _describe_exit(code: int | None) -> str:
    """How a child ended: its exit code or the signal that killed it."""
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (maybe the kernel's out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"
