"""The worker: claims jobs, runs them in their queue's executor, records outcomes.

One anyio task group holds everything: the notification listener, the
heartbeat, the queue watcher, one fetch loop per served queue, the completion
writer, each running job, and the background tasks plugins register.

Guarantees, and how they are kept:

* **Never more running than allowed.** A queue's fetch loop claims at most
  its free slots (``concurrency`` minus jobs executing) in one statement.
  A slot frees when the job's function returns (or is abandoned at a time
  limit); its outcome is written in the next batch. When a queue changes
  executor, jobs still running on the old one count against the new loop.
* **Never twice at once.** Claims use ``FOR UPDATE SKIP LOCKED``; every
  outcome write is fenced on ``state = 'running'``, this worker's id and the
  attempt number, so a worker that lost a job cannot overwrite it.
* **At-least-once.** Outcomes that cannot be written (database away) are kept
  and retried; if the worker dies first the job stays ``running`` under its
  id until the recovery plugin gives it back. A claim is shielded from
  cancellation, so claimed rows are always started; a claim whose answer was
  lost (the database went away as it committed) is found by the heartbeat
  and put back to ``pending``. A clean shutdown drains for up to
  ``shutdown_timeout``, then stops what is left and puts it back to
  ``pending`` (the attempt not counted), writes every outcome, and removes
  the worker's row.
* **Wake-ups.** A push notifies the queue's fetch loop; a finished job wakes
  it when its last claim was full; a retry due at once wakes it once written.
  Polling (each queue's ``polling_interval``) only covers lost
  notifications and scheduled jobs.
* **Errors.** An error before the function runs (not allowed, cannot be
  imported, an invalid row) or that no attempt can avoid (kwargs that do not
  fit the signature, a cancellation) fails the job at once; any other
  error goes to ``chancy_retry_decision``. Hooks that raise are logged and
  skipped; nothing a job or a plugin raises stops the worker.

Which code runs: with ``allow=None`` (the Python API's default) a worker runs
any importable function a job names; whoever can insert a row can then run
any code the worker can import. Pass ``allow=["myapp.tasks"]`` to run only
functions under those module prefixes plus those registered with ``@job``
(``allow=()``: only registered ones); anything else fails without being
imported, and the function found must itself be defined under an allowed
prefix (``myapp.tasks.os.system`` is refused). The ``chancy worker`` command
restricts by default.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Self

import anyio
import anyio.abc
import psycopg
from psycopg import sql

from chancy_core import events
from chancy_core import sql as q
from chancy_core.app import Chancy
from chancy_core.errors import (
    TRANSIENT_ERRORS,
    ConfigurationError,
    DatabaseUnavailableError,
    JobCancelled,
    JobNotAllowedError,
    SchemaMissingError,
    TimeLimitExceeded,
    WorkerError,
)
from chancy_core.executors import Executor, make_executor, resolve_function
from chancy_core.hooks import Guarded, HookFlags, call_event, decide, results
from chancy_core.hookspecs import WorkerTask
from chancy_core.job import Limit, QueuedJob, registered_jobs
from chancy_core.queue import Queue
from chancy_core.sql import job_from_row, queue_from_row

__all__ = ["Worker"]

log = logging.getLogger(__name__)

#: Errors that mean "the database is unreachable right now": retried with backoff.
TRANSIENT = TRANSIENT_ERRORS
_MAX_BACKOFF = 5.0


def _is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is (or only holds) a cancellation, which must propagate."""
    if isinstance(exc, anyio.get_cancelled_exc_class() | KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(e) for e in exc.exceptions)
    return False


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _nothing() -> None:
    """No time limit to start."""


def _deadline(scope: anyio.CancelScope, seconds: float) -> None:
    """Start a job's time limit: its scope is cancelled ``seconds`` from now."""
    scope.deadline = anyio.current_time() + seconds


def _storable(text: str) -> str:
    """``text`` as PostgreSQL can store it: no NUL character, no lone surrogate."""
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00") if "\x00" in text else text


@dataclass(eq=False)
class _Running:
    """A job this worker is executing."""

    job: QueuedJob
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stop_reason: str | None = None  # "cancel" or "shutdown"


@dataclass(eq=False)
class _Outcome:
    id: str
    attempt: int
    state: str
    error: str | None
    scheduled_at: datetime | None  # None: keep the row's (a retry that is due at once)
    meta: str | None
    queue: str

    def as_json(self) -> dict[str, Any]:
        """The outcome as ``COMPLETE_JOBS`` reads it (absent keys are NULL)."""
        found: dict[str, Any] = {"id": self.id, "attempt": self.attempt, "state": self.state}
        if self.error is not None:
            found["error"] = self.error
        if self.scheduled_at is not None:
            found["scheduled_at"] = self.scheduled_at.isoformat()
        if self.meta is not None:
            found["meta"] = self.meta
        return found


def _accepts(func: Callable[..., Any], kwargs: dict[str, Any]) -> bool:
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


def _signature(func: Callable[..., Any]) -> str:
    try:
        return str(inspect.signature(func))
    except (TypeError, ValueError):
        return "(...)"


class _QueueLoop:
    """The state of one served queue.

    When a queue is deleted, stops matching the worker's tags or changes executor, its
    loop is *retired*: it claims no more, its running jobs finish on its executor (closed
    once they have), and a new loop of the same queue counts them as busy slots."""

    def __init__(self, queue: Queue, previous: _QueueLoop | None = None) -> None:
        self.queue = queue
        self.executor: Executor = make_executor(
            queue.executor, queue.concurrency, queue.executor_options
        )
        self.running: set[_Running] = set()
        self.wake = anyio.Event()
        self.scope = anyio.CancelScope()
        self.more = False  # the last claim was full: there may be more to take
        self.previous = previous  # the retired loop of this queue whose jobs still run
        self.retired = False
        self.done = anyio.Event()  # set when the fetch loop has exited

    def poke(self) -> None:
        self.wake.set()

    @property
    def free(self) -> int:
        busy = len(self.running)
        if self.previous is not None:
            if self.previous.running:
                busy += len(self.previous.running)
            else:
                self.previous = None
        return self.queue.concurrency - busy


class Worker:
    """Runs jobs from the queues whose tags match this worker's.

    Use as an async context manager to run it in the background::

        async with Worker(chancy) as worker:
            await worker.wait_for_shutdown()

    or ``await Worker(chancy).serve()`` to run until SIGINT/SIGTERM.

    :param chancy: the app (opened by the caller).
    :param worker_id: a unique id (default: a random UUID).
    :param tags: the worker's tags, matched by queues' tag patterns (always
        includes ``hostname:<host>`` and ``worker:<id>``).
    :param allow: module prefixes whose functions may run, plus ``@job``
        functions; ``None`` runs anything importable (see the module docs).
    :param heartbeat_interval: seconds between heartbeats (and cancellation checks).
    :param shutdown_timeout: seconds running jobs get to finish on shutdown
        before they are stopped and put back to ``pending``.
    :param completion_batch: outcomes written per statement at most.
    :param completion_delay: seconds an outcome may wait for others to share its write.
    """

    def __init__(
        self,
        chancy: Chancy,
        *,
        worker_id: str | None = None,
        tags: Iterable[str] | None = None,
        allow: Sequence[str] | None = None,
        heartbeat_interval: float = 5.0,
        shutdown_timeout: float = 30.0,
        completion_batch: int = 150,
        completion_delay: float = 0.005,
    ) -> None:
        if isinstance(allow, str):
            raise ConfigurationError("allow takes a list of module prefixes, not one string")
        if heartbeat_interval <= 0 or shutdown_timeout < 0:
            raise ConfigurationError("heartbeat_interval must be > 0 and shutdown_timeout >= 0")
        if not 1 <= completion_batch <= 200:
            raise ConfigurationError("completion_batch must be from 1 to 200")
        self.chancy = chancy
        self.worker_id = worker_id or str(uuid.uuid4())
        self.hostname = socket.gethostname()
        self.tags = frozenset(
            {*(tags or {"default"}), f"hostname:{self.hostname}", f"worker:{self.worker_id}"}
        )
        self.allow = None if allow is None else tuple(allow)
        self.heartbeat_interval = heartbeat_interval
        self.shutdown_timeout = shutdown_timeout
        self.completion_batch = completion_batch
        self.completion_delay = completion_delay
        self.queues: dict[str, _QueueLoop] = {}
        self.is_leader = False
        self._schema = chancy.schema
        self._hooks = chancy.plugins.hook
        self._outcomes: list[_Outcome] = []
        self._outcome_ready = anyio.Event()
        self._stopping = anyio.Event()
        self._stopped = anyio.Event()
        self._queues_changed = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._outer: anyio.abc.TaskGroup | None = None
        self._leader_tasks: list[tuple[str, WorkerTask]] = []
        self._leader_scope: anyio.CancelScope | None = None
        self._elects = False
        self._flags = HookFlags.of(self._hooks)
        # Whether plugins may change a job's meta, which is then written back if changed.
        self._meta_hooks = (
            self._flags.starting or self._flags.wrap or self._flags.completed or self._flags.retry
        )
        self._retired: set[_QueueLoop] = set()
        # Outcomes recorded but not yet written, by queue: with the running jobs they may
        # be at most 2 x concurrency, so a slow write cannot let claims run ahead unbounded.
        self._unwritten: dict[str, int] = {}
        self._flush_lock = anyio.Lock()
        self._drain_scope: anyio.CancelScope | None = None
        self._checked: dict[str, Callable[..., Any]] = {}  # allowed functions, by name
        self._finishing: set[str] = set()  # ids of jobs that ran, their outcome not recorded
        self._register_lock = anyio.Lock()  # the heartbeat never re-registers after shutdown
        self._unregistered = False
        self._idle_runners = 0  # runner tasks waiting for a job (see _runner)

    # --- running -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._outer = anyio.create_task_group()
        await self._outer.__aenter__()
        try:
            await self._outer.start(self.run)
        except BaseException:
            await self._outer.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        await self.stop()
        assert self._outer is not None
        return await self._outer.__aexit__(*exc_info)

    async def stop(self) -> None:
        """Stop claiming, let running jobs finish (up to ``shutdown_timeout``), and exit."""
        self._stopping.set()
        await self._stopped.wait()

    async def wait_for_shutdown(self) -> None:
        """Wait until the worker has stopped."""
        await self._stopped.wait()

    async def serve(self) -> None:
        """Run until SIGINT or SIGTERM, then shut down gracefully."""
        import signal

        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

                async def on_signal() -> None:
                    async for signum in signals:
                        if not self._stopping.is_set():
                            log.info("received signal %s; shutting down", signum)
                            self._stopping.set()
                        else:  # a second signal: stop running jobs now
                            log.info("received signal %s again; stopping running jobs", signum)
                            self.shutdown_timeout = 0
                            if self._drain_scope is not None:
                                self._drain_scope.cancel()

                tg.start_soon(on_signal)
                await self.run()
                tg.cancel_scope.cancel()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the worker until :meth:`stop` (or SIGTERM via :meth:`serve`)."""
        try:
            try:
                await self._register()
            except psycopg.errors.UndefinedTable:
                raise SchemaMissingError(
                    "the chancy tables do not exist: run `await chancy.migrate()` or"
                    " `chancy migrate`"
                ) from None
            try:
                self._elects = bool(self._hooks.chancy_elects_leader(worker=self))
            except Exception:
                # Safe side: no leader-only task runs until a plugin makes this worker lead.
                log.exception("a plugin failed in chancy_elects_leader; waiting for a leader")
                self._elects = True
            # Claimed jobs handed over to idle runner tasks (see _runner).
            self._to_run, self._ready = anyio.create_memory_object_stream[
                tuple[_QueueLoop, _Running]
            ](math.inf)
            async with self._to_run, self._ready, anyio.create_task_group() as tg:
                self._tg = tg
                await tg.start(self._listen)
                tg.start_soon(self._heartbeat)
                tg.start_soon(self._write_outcomes)
                await self._refresh_queues()
                tg.start_soon(self._watch_queues)
                self._start_plugin_tasks(tg)
                if not self._elects:
                    await self.set_leader(True)
                await call_event(self._hooks.chancy_worker_started, worker=self)
                log.info(
                    "worker %s started, serving %s",
                    self.worker_id,
                    sorted(self.queues),
                    extra={"worker_id": self.worker_id},
                )
                task_status.started()
                await self._stopping.wait()
                await self._shutdown()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                for loop in self._all_loops():
                    with anyio.move_on_after(10):
                        await loop.executor.aclose()
                self._stopped.set()

    def _all_loops(self) -> list[_QueueLoop]:
        return [*self.queues.values(), *self._retired]

    def _busy(self) -> bool:
        """Whether a job still runs (or has its outcome yet to record), or a fetch loop
        may still start one."""
        return bool(self._finishing) or any(
            loop.running or not loop.done.is_set() for loop in self._all_loops()
        )

    async def _shutdown(self) -> None:
        """Stop claiming, drain (up to ``shutdown_timeout``), stop what is left and put it
        back to ``pending``, write every outcome, and unregister."""
        with anyio.CancelScope(shield=True):
            for loop in self._all_loops():
                loop.scope.cancel()  # stop claiming; running jobs go on
            with anyio.move_on_after(self.shutdown_timeout) as self._drain_scope:
                await call_event(self._hooks.chancy_worker_stopping, worker=self)
                while self._busy():
                    await anyio.sleep(0.01)
            # Stop what is left. A claim that was under way when the fetch loops were
            # cancelled still starts its jobs, so repeat until nothing runs.
            released: list[QueuedJob] = []
            while self._busy():
                for loop in self._all_loops():
                    for running in loop.running:
                        if running.stop_reason is None:
                            running.stop_reason = "shutdown"
                            running.scope.cancel()
                            released.append(running.job)
                await anyio.sleep(0.01)
            with anyio.move_on_after(max(self.shutdown_timeout, 5.0)):
                try:
                    await self._flush()  # first: a job that finished anyway keeps its outcome
                    async with self._register_lock:
                        self._unregistered = True
                        await self._retrying("releasing jobs", partial(self._release, released))
                        await self._retrying(
                            "unregistering",
                            partial(
                                self._with_conn,
                                self._schema.render(q.DELETE_WORKER),
                                {"worker_id": self.worker_id},
                            ),
                        )
                except Exception:
                    log.exception("worker %s could not shut down cleanly", self.worker_id)
            log.info("worker %s stopped", self.worker_id, extra={"worker_id": self.worker_id})

    # --- database helpers ----------------------------------------------------------------

    async def _with_conn(self, statement: bytes, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with self.chancy.pool.connection() as conn:
            cur = await conn.execute(statement, params)
            return await cur.fetchall() if cur.description else []

    async def _retrying(self, what: str, func: Callable[[], Any]) -> Any:
        """Call ``func`` until the database answers, backing off up to 5 s."""
        delay = 0.1
        while True:
            try:
                return await func()
            except TRANSIENT as exc:
                log.warning(
                    "%s failed (%s); retrying in %.1fs",
                    what,
                    exc,
                    delay,
                    extra={"worker_id": self.worker_id},
                )
                await self._check_pool()
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)

    async def _check_pool(self) -> None:
        """After a connection error, drop the pool's broken connections at once (after a
        database restart every pooled connection is dead, and each would fail once)."""
        with anyio.move_on_after(5):
            try:
                await self.chancy.pool.check()
            except Exception as exc:
                log.debug("checking the pool failed: %s", exc)

    async def _register(self) -> None:
        await self._with_conn(
            self._schema.render(q.UPSERT_WORKER),
            {
                "worker_id": self.worker_id,
                "hostname": self.hostname,
                "pid": os.getpid(),
                "tags": sorted(self.tags),
                "queues": sorted(self.queues),
            },
        )

    async def _release(self, jobs: list[QueuedJob]) -> None:
        if jobs:
            await self._with_conn(
                self._schema.render(q.RELEASE_JOBS),
                {
                    "ids": [uuid.UUID(j.id) for j in jobs],
                    "worker_id": self.worker_id,
                },
            )

    # --- background loops ----------------------------------------------------------------

    async def _listen(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Wake queues on notifications; reconnect when the connection drops."""
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._schema.channel))
        delay = 0.1
        started = False
        while True:
            try:
                conn = await self.chancy.connect()
                async with conn:
                    await conn.execute(listen)
                    delay = 0.1
                    if not started:
                        started = True
                        task_status.started()
                    else:  # we may have missed notifications while away
                        for loop in self.queues.values():
                            loop.poke()
                        self._queues_changed.set()
                    async for note in conn.notifies():
                        self._on_notification(note.payload)
            except Exception as exc:  # whatever broke the connection, the worker goes on
                log.warning(
                    "listener lost its connection (%s); reconnecting in %.1fs (polling meanwhile)",
                    exc,
                    delay,
                )
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)

    def _on_notification(self, payload: str) -> None:
        event = events.parse(payload)  # anyone may NOTIFY on the channel: None if malformed
        if event is None:
            log.debug("ignoring a malformed notification: %r", payload)
        elif event.kind == events.PUSHED:
            loop = self.queues.get(str(event.queue))
            if loop is not None:
                loop.poke()
        elif event.kind == events.QUEUE:
            self._queues_changed.set()
        elif event.kind == events.CANCEL:
            self._cancel_running(set(event.ids))

    def _cancel_running(self, ids: set[str]) -> None:
        for loop in self._all_loops():
            for running in loop.running:
                if running.job.id in ids and running.stop_reason is None:
                    running.stop_reason = "cancel"
                    running.scope.cancel()

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self.heartbeat_interval)
            try:
                async with self._register_lock:
                    if self._unregistered:
                        return
                    await self._register()
                rows = await self._with_conn(
                    self._schema.render(q.SELECT_OWN_RUNNING),
                    {"worker_id": self.worker_id, "age": 2 * self.heartbeat_interval + 2.0},
                )
                self._cancel_running({str(job_id) for job_id, asked, _ in rows if asked})
                await self._release_orphans([job_id for job_id, _, old in rows if old])
            except TRANSIENT as exc:
                log.warning("heartbeat failed (%s); will try again", exc)
                await self._check_pool()

    async def _release_orphans(self, ids: list[uuid.UUID]) -> None:
        """Put back jobs the database says this worker runs but it does not know of: a
        claim committed while its answer was lost (the database went away mid-claim).
        Only jobs claimed a while ago are considered, so a claim under way is not one."""
        if not ids:
            return
        known = {r.job.id for loop in self._all_loops() for r in loop.running}
        known |= self._finishing
        known.update(o.id for o in self._outcomes)
        orphans = [i for i in ids if str(i) not in known]
        if orphans:
            log.warning(
                "jobs %s are running under worker %s, which is not running them (a claim"
                " whose answer was lost); putting them back to pending",
                ", ".join(map(str, orphans)),
                self.worker_id,
            )
            await self._with_conn(
                self._schema.render(q.RELEASE_JOBS),
                {"ids": orphans, "worker_id": self.worker_id},
            )

    async def _watch_queues(self) -> None:
        while True:
            interval = min((lp.queue.polling_interval for lp in self.queues.values()), default=1.0)
            with anyio.move_on_after(min(interval, 1.0)):
                await self._queues_changed.wait()
            self._queues_changed = anyio.Event()
            try:
                await self._refresh_queues()
            except TRANSIENT as exc:
                log.warning("could not read the queues (%s); will try again", exc)

    async def _refresh_queues(self) -> None:
        rows = await self._with_conn(self._schema.render(q.SELECT_QUEUES), {})
        wanted = {
            queue.name: queue for queue in map(queue_from_row, rows) if queue.served_by(self.tags)
        }
        assert self._tg is not None
        if self._stopping.is_set():
            return  # shutting down: start no fetch loop
        previous: dict[str, _QueueLoop] = {}
        for name, loop in list(self.queues.items()):
            new = wanted.get(name)
            if new is None or (new.executor, new.executor_options) != (
                loop.queue.executor,
                loop.queue.executor_options,
            ):
                del self.queues[name]
                self._retire(loop)
                previous[name] = loop
                log.info("stopped serving queue %s", name)
            elif new != loop.queue:
                if new.concurrency != loop.queue.concurrency and hasattr(loop.executor, "limiter"):
                    loop.executor.limiter.total_tokens = new.concurrency
                loop.queue = new
                loop.poke()
        for name, queue in wanted.items():
            if name not in self.queues:
                old = previous.get(name)
                if old is None:
                    old = next((r for r in self._retired if r.queue.name == name), None)
                loop = _QueueLoop(queue, old if old is not None and old.running else None)
                self.queues[name] = loop
                self._tg.start_soon(self._fetch_loop, loop)
                log.info(
                    "serving queue %s (%s, concurrency %d)", name, queue.executor, queue.concurrency
                )

    def _retire(self, loop: _QueueLoop) -> None:
        """Stop a loop's claiming; its running jobs finish, then its executor is closed."""
        loop.retired = True
        loop.scope.cancel()
        if loop.running:
            self._retired.add(loop)
        else:
            self._close_retired(loop)

    def _close_retired(self, loop: _QueueLoop) -> None:
        self._retired.discard(loop)
        if self._tg is not None and not self._stopping.is_set():
            self._tg.start_soon(loop.executor.aclose)
        # else: run()'s final clean-up closes it

    def _start_plugin_tasks(self, tg: anyio.abc.TaskGroup) -> None:
        def register(name: str, func: WorkerTask, *, leader_only: bool = False) -> None:
            if not callable(func):
                raise WorkerError(f"plugin task {name!r} is not callable")
            if leader_only:
                self._leader_tasks.append((name, func))
            else:
                tg.start_soon(self._keep_running, name, func)

        for _ in results(self._hooks.chancy_worker_tasks, worker=self, register=register):
            pass  # a plugin that raises is logged (its tasks may not run) and skipped

    async def _keep_running(self, name: str, func: WorkerTask) -> None:
        while True:
            try:
                await func(self)
                return
            except Exception:
                log.exception("plugin task %s failed; restarting it in 1s", name)
                await anyio.sleep(1.0)

    async def set_leader(self, leader: bool) -> None:
        """Become (or stop being) the leader: start or stop the leader-only tasks.

        Called by a leadership plugin; without one, every worker leads itself."""
        if leader == self.is_leader:
            return
        self.is_leader = leader
        assert self._tg is not None
        if leader:
            scope = self._leader_scope = anyio.CancelScope()

            async def lead() -> None:
                with scope:
                    async with anyio.create_task_group() as tg:
                        for name, func in self._leader_tasks:
                            tg.start_soon(self._keep_running, name, func)

            self._tg.start_soon(lead)
        elif self._leader_scope is not None:
            self._leader_scope.cancel()
            self._leader_scope = None
        await call_event(self._hooks.chancy_leadership_changed, worker=self, is_leader=leader)

    # --- claiming ------------------------------------------------------------------------

    async def _fetch_loop(self, loop: _QueueLoop) -> None:
        """Claim jobs of one queue whenever it has free slots: at once after a full claim,
        else when woken (a push, a freed slot, a queue change) or every polling interval."""
        delay = 0.1
        try:
            with loop.scope:
                while True:
                    queue = loop.queue
                    # Rows held (running + outcomes not yet written) stay <= 2 x concurrency:
                    # a claim overlaps the write of the previous batch's outcomes, but
                    # claims never run ahead of a slow writer.
                    free = loop.free
                    limit = min(free, free + queue.concurrency - self._unwritten.get(queue.name, 0))
                    if queue.state is Queue.State.PAUSED or limit <= 0:
                        with anyio.move_on_after(queue.polling_interval):
                            await loop.wake.wait()
                        loop.wake = anyio.Event()
                        continue
                    loop.wake = anyio.Event()  # a poke from now on means: claim again
                    try:
                        claimed, wait = await self._claim(loop, queue, limit)
                        delay = 0.1
                    except Exception as exc:
                        if isinstance(exc, TRANSIENT):
                            log.warning(
                                "claiming from %s failed (%s); retrying in %.1fs",
                                queue.name,
                                exc,
                                delay,
                            )
                            await self._check_pool()
                        else:
                            log.exception("claiming from %s failed; retrying", queue.name)
                        await anyio.sleep(delay)
                        delay = min(delay * 2, _MAX_BACKOFF)
                        continue
                    loop.more = claimed >= limit
                    if not loop.more:
                        with anyio.move_on_after(wait):
                            await loop.wake.wait()
        finally:
            loop.done.set()

    async def _claim(self, loop: _QueueLoop, queue: Queue, limit: int) -> tuple[int, float]:
        """Claim up to ``limit`` jobs and start them; return how many, and how long to wait
        for a wake-up before trying again if that was not all.

        The claim and the start of its jobs are shielded from cancellation (a retired loop,
        a shutdown): jobs claimed in the database are always started, so that the shutdown
        sees them and a claim is never lost half-way."""
        pool = self.chancy.pool
        conn = await pool.getconn()
        limited = False
        with anyio.CancelScope(shield=True) as shield:
            shield.deadline = anyio.current_time() + max(30.0, 3 * self.chancy.connect_timeout)
            rows: list[tuple[Any, ...]] = []
            try:
                rows, limited = await self._claim_on(conn, queue, limit)
            finally:
                await pool.putconn(conn)
            for row in sorted(rows, key=lambda r: (-r[q.J_PRIORITY], r[q.J_ID])):
                self._start_job(loop, row)
        if shield.cancelled_caught:
            raise DatabaseUnavailableError(f"claiming from {queue.name} did not finish in time")
        wait = queue.polling_interval
        if limited and queue.rate_limit_window:
            # Nothing left in this window: try again when the next one opens.
            window = queue.rate_limit_window
            wait = min(wait, window - time.time() % window + 0.01)
        return len(rows), wait

    async def _claim_on(
        self, conn: psycopg.AsyncConnection[Any], queue: Queue, limit: int
    ) -> tuple[list[tuple[Any, ...]], bool]:
        params = {"queue": queue.name, "limit": limit, "worker_id": self.worker_id}
        claim = self._schema.render(q.CLAIM_JOBS)
        if queue.rate_limit is None:
            cur = await conn.execute(claim, params)
            return await cur.fetchall(), False
        async with conn.transaction():
            rate = {
                "queue": queue.name,
                "window": queue.rate_limit_window,
                "limit": queue.rate_limit,
                "wanted": limit,
            }
            await conn.execute(self._schema.render(q.ENSURE_RATE_ROW), rate)
            cur = await conn.execute(self._schema.render(q.TAKE_RATE_TOKENS), rate)
            granted = (await cur.fetchone() or (0,))[0]
            if not granted:
                return [], True
            cur = await conn.execute(claim, {**params, "limit": granted})
            rows = await cur.fetchall()
            if len(rows) < granted:
                await conn.execute(
                    self._schema.render(q.RETURN_RATE_TOKENS),
                    {"queue": queue.name, "unused": granted - len(rows)},
                )
            return rows, granted < limit

    def _start_job(self, loop: _QueueLoop, row: tuple[Any, ...]) -> None:
        assert self._tg is not None
        try:
            job = job_from_row(row)
        except Exception as exc:  # a row written by hand that is not a valid job
            self._record(
                _Outcome(
                    id=str(row[q.J_ID]),
                    attempt=row[q.J_ATTEMPTS],
                    state="failed",
                    error=_storable(f"invalid job row, not run: {exc}"),
                    scheduled_at=None,
                    meta=None,
                    queue=row[q.J_QUEUE],
                )
            )
            return
        running = _Running(job)
        loop.running.add(running)
        if self._idle_runners:
            self._idle_runners -= 1
            self._to_run.send_nowait((loop, running))
        else:
            self._tg.start_soon(self._runner, loop, running)

    async def _runner(self, loop: _QueueLoop, running: _Running) -> None:
        """Run jobs one after the other: this one, then those handed over by ``_start_job``.

        Runners are kept once started (as many as jobs ever ran at once), so a job costs a
        hand-over, not a new task."""
        while True:
            await self._run_job(loop, running)
            self._idle_runners += 1
            loop, running = await self._ready.receive()

    # --- running a job -------------------------------------------------------------------

    def _function(self, name: str) -> Callable[..., Any]:
        """The function a job names, if this worker may run it (checked once per name).

        Under an allow-list the name must be under an allowed prefix *before* anything is
        imported, and the function found must be defined under one too: ``myapp.tasks.os``
        is the ``os`` module that ``myapp.tasks`` imported, and ``os.system`` is not allowed
        because of it."""
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

    def _wrap(self, job: QueuedJob) -> list[Guarded]:
        """The plugins' context managers for this job, in pluggy's call order (tryfirst
        ones outermost); a plugin that raises is logged and skipped."""
        return [
            Guarded(cm, plugin)
            for plugin, cm in results(self._hooks.chancy_job_wrap, worker=self, job=job)
        ]

    async def _run_job(self, loop: _QueueLoop, running: _Running) -> None:
        job = running.job
        error: BaseException | None = None
        result: Any = None
        permanent = True  # errors before the function runs: another attempt cannot help
        meta_before = json.dumps(job.meta) if self._meta_hooks else None
        try:
            func = self._function(job.func)
            seconds = min(
                (lim.value for lim in job.limits if lim.type_ is Limit.Type.TIME), default=None
            )
            kwargs = job.kwargs or {}
            permanent = False
            if self._flags.starting:
                await call_event(self._hooks.chancy_job_starting, worker=self, job=job)
            scope = running.scope
            stopped: BaseException | None = None
            try:
                with scope:
                    started = _nothing if seconds is None else partial(_deadline, scope, seconds)
                    if self._flags.wrap:
                        async with AsyncExitStack() as stack:
                            for cm in self._wrap(job):
                                await stack.enter_async_context(cm)
                            result = await loop.executor.run(job, func, kwargs, started)
                    else:
                        result = await loop.executor.run(job, func, kwargs, started)
            except Exception as exc:
                if not scope.cancel_called:
                    if isinstance(exc, TypeError) and not _accepts(func, kwargs):
                        permanent = True  # no attempt can succeed with these kwargs
                        exc.add_note(
                            f"the job's kwargs ({', '.join(sorted(kwargs)) or 'none'}) do not"
                            f" fit the signature of {job.func}{_signature(func)}: push it with"
                            " kwargs that do"
                        )
                    raise
                stopped = exc  # the job turned its cancellation into an error
            if scope.cancel_called:
                result = None
                if running.stop_reason == "shutdown":
                    return  # the shutdown puts it back to pending
                if running.stop_reason == "cancel":
                    permanent = True
                    raise JobCancelled(f"job {job.id} was cancelled while running") from stopped
                raise TimeLimitExceeded(
                    f"job {job.id} exceeded its time limit of {seconds}s and was stopped"
                ) from stopped
        except Exception as exc:
            error = exc
        except BaseException as exc:  # SystemExit and the like, raised by the job
            if _is_cancellation(exc):
                raise
            error = exc
        finally:
            loop.running.discard(running)
            if loop.retired:
                if not loop.running and loop in self._retired:
                    self._close_retired(loop)
                current = self.queues.get(job.queue)
                if current is not None:
                    current.poke()  # a slot of the queue's new loop freed
            elif loop.more:
                loop.poke()
        self._finishing.add(job.id)
        try:
            await self._complete(job, error, result, permanent, meta_before)
        finally:
            self._finishing.discard(job.id)

    def _decide_retry(self, job: QueuedJob, error: BaseException) -> Any:
        return decide(self._hooks.chancy_retry_decision, worker=self, job=job, error=error)

    async def _complete(
        self,
        job: QueuedJob,
        error: BaseException | None,
        result: Any,
        permanent: bool,
        meta_before: str | None,
    ) -> None:
        scheduled_at: datetime | None = None
        if error is None:
            state = QueuedJob.State.SUCCEEDED
        elif permanent:
            state = QueuedJob.State.FAILED
        else:
            decision = self._decide_retry(job, error)
            if decision is True:
                decision = datetime.now(UTC)
            if isinstance(decision, datetime):
                if decision.tzinfo is None:
                    decision = decision.replace(tzinfo=UTC)
                state = QueuedJob.State.RETRYING
                # A retry that is due keeps the row's (past) scheduled_at: it runs at once,
                # whatever the clocks of this host and the database say.
                scheduled_at = decision if decision > datetime.now(UTC) else None
            else:
                state = QueuedJob.State.FAILED
        text = None
        if error is not None:
            text = _storable("".join(traceback.format_exception(error)).strip())
        if self._flags.completed:
            # Not dataclasses.replace: the claimed row is not validated again (see job_from_row).
            done = QueuedJob.from_trusted(**{**job.__dict__, "state": state})
            await call_event(
                self._hooks.chancy_job_completed, worker=self, job=done, error=error, result=result
            )
        meta = None
        if self._meta_hooks:
            try:
                meta = json.dumps(job.meta)  # plugins change it in place
            except (TypeError, ValueError) as exc:
                log.error(
                    "job %s: plugins left a meta that is not JSON (%s); not saved", job.id, exc
                )
        self._record(
            _Outcome(
                job.id,
                job.attempts,
                state.value,
                text,
                scheduled_at,
                meta if meta != meta_before else None,
                job.queue,
            )
        )

    # --- writing outcomes ----------------------------------------------------------------

    def _record(self, outcome: _Outcome) -> None:
        self._unwritten[outcome.queue] = self._unwritten.get(outcome.queue, 0) + 1
        self._outcomes.append(outcome)
        self._outcome_ready.set()

    async def _write_outcomes(self) -> None:
        while True:
            await self._outcome_ready.wait()
            if len(self._outcomes) < self.completion_batch:
                await anyio.sleep(self.completion_delay)
            await self._flush()

    async def _flush(self) -> None:
        """Write every recorded outcome, a batch per statement. One writer at a time (the
        writer task and the shutdown both flush); an outcome is dropped from the list only
        once written, and writing it twice is harmless (the write is fenced)."""
        async with self._flush_lock:
            while self._outcomes:
                batch = self._outcomes[: self.completion_batch]
                await self._write(batch)
                del self._outcomes[: len(batch)]
                for o in batch:
                    self._unwritten[o.queue] -= 1
                again = {o.queue for o in batch if o.state == "retrying" and not o.scheduled_at}
                for name in {o.queue for o in batch}:  # retries due at once, freed slots
                    loop = self.queues.get(name)
                    if loop is not None and (loop.more or name in again):
                        loop.poke()
            self._outcome_ready = anyio.Event()

    async def _write(self, batch: list[_Outcome]) -> None:
        params = {
            "outcomes": _encode([o.as_json() for o in batch]),
            "worker_id": self.worker_id,
            "channel": self._schema.channel,
        }
        statement = self._schema.render(q.COMPLETE_JOBS)
        try:
            await self._retrying("writing outcomes", partial(self._with_conn, statement, params))
        except Exception as exc:
            # Not the connection: a value the database refuses. Find it and write the
            # others, so that one bad outcome does not hold back the batch (or the worker).
            if len(batch) > 1:
                for outcome in batch:
                    await self._write([outcome])
                return
            outcome = batch[0]
            if outcome.meta is None and outcome.error is None:
                log.error("could not write the outcome of job %s: %s", outcome.id, exc)
                return
            log.error(
                "could not write the outcome of job %s (%s); writing it without meta",
                outcome.id,
                exc,
            )
            await self._write(
                [
                    dataclasses.replace(
                        outcome,
                        meta=None,
                        error=None
                        if outcome.error is None
                        else outcome.error.encode("ascii", "backslashreplace").decode(),
                    )
                ]
            )

    # --- introspection -------------------------------------------------------------------

    @property
    def running_jobs(self) -> list[QueuedJob]:
        """The jobs this worker is executing right now."""
        return [r.job for loop in self._all_loops() for r in loop.running]

    def __repr__(self) -> str:
        return f"Worker({self.worker_id!r}, queues={sorted(self.queues)!r})"
