"""The worker: claims jobs, runs them in their queue's executor, records outcomes.

One anyio task group holds everything: the notification listener, the
heartbeat, the queue watcher, one fetch loop per served queue, the completion
writer, each running job, and the background tasks plugins register.

Guarantees, and how they are kept:

* **Never more running than allowed.** A queue's fetch loop claims at most
  its free slots (``concurrency`` minus jobs executing) in one statement.
  A slot frees when the job's function returns; its outcome is written in
  the next batch.
* **Never twice at once.** Claims use ``FOR UPDATE SKIP LOCKED``; every
  outcome write is fenced on ``state = 'running'``, this worker's id and the
  attempt number, so a worker that lost a job cannot overwrite it.
* **At-least-once.** Outcomes that cannot be written (database away) are kept
  and retried; if the worker dies first the job stays ``running`` under its
  id until the recovery plugin gives it back. A clean shutdown puts jobs it
  had to stop back to ``pending``.

Which code runs: with ``allow=None`` (the Python API's default) a worker runs
any importable function a job names; whoever can insert a row can then run
any code the worker can import. Pass ``allow=["myapp.tasks"]`` to run only
functions under those module prefixes plus those registered with ``@job``
(``allow=()``: only registered ones); anything else fails without being
imported. The ``chancy worker`` command restricts by default.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Self

import anyio
import anyio.abc
import psycopg
from psycopg import sql
from psycopg_pool import PoolTimeout

from chancy_core import sql as q
from chancy_core.app import Chancy, job_from_row, queue_from_row
from chancy_core.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    JobNotAllowedError,
    SchemaMissingError,
    WorkerError,
)
from chancy_core.executors import (
    Executor,
    JobCancelled,
    TimeLimitExceeded,
    make_executor,
    resolve_function,
)
from chancy_core.hookspecs import WorkerTask
from chancy_core.job import Limit, QueuedJob
from chancy_core.plugins import call_event, implemented
from chancy_core.queue import Queue

__all__ = ["Worker"]

log = logging.getLogger(__name__)

#: Errors that mean "the database is unreachable right now": retried with backoff.
TRANSIENT = (psycopg.OperationalError, PoolTimeout, DatabaseUnavailableError, OSError)
_MAX_BACKOFF = 5.0


@dataclass(eq=False)
class _Running:
    """A job this worker is executing."""

    job: QueuedJob
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stop_reason: str | None = None  # "cancel" or "shutdown"


@dataclass(eq=False)
class _Outcome:
    id: uuid.UUID
    attempt: int
    state: str
    error: str | None
    scheduled_at: datetime | None
    meta: str | None


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


class _QueueLoop:
    """The state of one served queue."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.executor: Executor = make_executor(
            queue.executor, queue.concurrency, queue.executor_options
        )
        self.running: set[_Running] = set()
        self.wake = anyio.Event()
        self.scope = anyio.CancelScope()
        self.more = False  # the last claim was full: there may be more to take

    def poke(self) -> None:
        self.wake.set()

    @property
    def free(self) -> int:
        return self.queue.concurrency - len(self.running)


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
        self._has = {
            name: implemented(getattr(self._hooks, name))
            for name in (
                "chancy_job_starting",
                "chancy_job_wrap",
                "chancy_job_completed",
            )
        }
        self._meta_hooks = (
            self._has["chancy_job_completed"]
            or len(self._hooks.chancy_retry_decision.get_hookimpls()) > 1
        )

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
                        log.info("received signal %s; shutting down", signum)
                        self._stopping.set()
                        return

                tg.start_soon(on_signal)
                await self.run()
                tg.cancel_scope.cancel()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the worker until :meth:`stop` (or SIGTERM via :meth:`serve`)."""
        try:
            await self._register()
        except psycopg.errors.UndefinedTable:
            raise SchemaMissingError(
                "the chancy tables do not exist: run `await chancy.migrate()` or `chancy migrate`"
            ) from None
        self._elects = bool(self._hooks.chancy_elects_leader(worker=self))
        try:
            async with anyio.create_task_group() as tg:
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
                for loop in self.queues.values():
                    await loop.executor.aclose()
                self._stopped.set()

    async def _shutdown(self) -> None:
        with anyio.CancelScope(shield=True):
            for loop in self.queues.values():
                loop.scope.cancel()  # stop claiming; running jobs go on
            with anyio.move_on_after(self.shutdown_timeout):
                await call_event(self._hooks.chancy_worker_stopping, worker=self)
                while any(loop.running for loop in self.queues.values()):
                    await anyio.sleep(0.01)
            left = [r for loop in self.queues.values() for r in loop.running]
            for running in left:
                running.stop_reason = "shutdown"
                running.scope.cancel()
            while any(loop.running for loop in self.queues.values()):
                await anyio.sleep(0.01)
            with anyio.move_on_after(max(self.shutdown_timeout, 5.0)):
                await self._flush()
                await self._release([r.job for r in left])
                await self._with_conn(
                    self._schema.render(q.DELETE_WORKER), {"worker_id": self.worker_id}
                )
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
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)

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
            except TRANSIENT as exc:
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
        try:
            event = json.loads(payload)
            kind = event.get("e")
        except (ValueError, AttributeError):
            return
        if kind == "pushed":
            loop = self.queues.get(event.get("q"))
            if loop is not None:
                loop.poke()
        elif kind == "queue":
            self._queues_changed.set()
        elif kind == "cancel":
            self._cancel_running(set(event.get("ids") or ()))

    def _cancel_running(self, ids: set[str]) -> None:
        for loop in self.queues.values():
            for running in loop.running:
                if running.job.id in ids and running.stop_reason is None:
                    running.stop_reason = "cancel"
                    running.scope.cancel()

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self.heartbeat_interval)
            try:
                await self._register()
                rows = await self._with_conn(
                    self._schema.render(q.SELECT_CANCELLED), {"worker_id": self.worker_id}
                )
                self._cancel_running({str(row[0]) for row in rows})
            except TRANSIENT as exc:
                log.warning("heartbeat failed (%s); will try again", exc)

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
        for name, loop in list(self.queues.items()):
            new = wanted.get(name)
            if new is None or (new.executor, new.executor_options) != (
                loop.queue.executor,
                loop.queue.executor_options,
            ):
                loop.scope.cancel()  # its running jobs finish; a new loop takes over
                del self.queues[name]
                log.info("stopped serving queue %s", name)
            elif new != loop.queue:
                if new.concurrency != loop.queue.concurrency and hasattr(loop.executor, "limiter"):
                    loop.executor.limiter.total_tokens = new.concurrency
                loop.queue = new
                loop.poke()
        for name, queue in wanted.items():
            if name not in self.queues:
                loop = _QueueLoop(queue)
                self.queues[name] = loop
                self._tg.start_soon(self._fetch_loop, loop)
                log.info(
                    "serving queue %s (%s, concurrency %d)", name, queue.executor, queue.concurrency
                )

    def _start_plugin_tasks(self, tg: anyio.abc.TaskGroup) -> None:
        def register(name: str, func: WorkerTask, *, leader_only: bool = False) -> None:
            if not callable(func):
                raise WorkerError(f"plugin task {name!r} is not callable")
            if leader_only:
                self._leader_tasks.append((name, func))
            else:
                tg.start_soon(self._keep_running, name, func)

        self._hooks.chancy_worker_tasks(worker=self, register=register)

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
        delay = 0.1
        with loop.scope:
            while True:
                queue = loop.queue
                if queue.state is Queue.State.PAUSED or loop.free <= 0:
                    with anyio.move_on_after(queue.polling_interval):
                        await loop.wake.wait()
                    loop.wake = anyio.Event()
                    continue
                loop.wake = anyio.Event()
                try:
                    rows = await self._claim(queue, loop.free)
                    delay = 0.1
                except TRANSIENT as exc:
                    log.warning(
                        "claiming from %s failed (%s); retrying in %.1fs", queue.name, exc, delay
                    )
                    await anyio.sleep(delay)
                    delay = min(delay * 2, _MAX_BACKOFF)
                    continue
                loop.more = len(rows) >= loop.free
                assert self._tg is not None
                for row in sorted(rows, key=lambda r: (-r[5], r[0])):
                    self._start_job(loop, row)
                if not loop.more:
                    with anyio.move_on_after(queue.polling_interval):
                        await loop.wake.wait()

    async def _claim(self, queue: Queue, limit: int) -> list[tuple[Any, ...]]:
        params = {"queue": queue.name, "limit": limit, "worker_id": self.worker_id}
        claim = self._schema.render(q.CLAIM_JOBS)
        async with self.chancy.pool.connection() as conn:
            if queue.rate_limit is None:
                cur = await conn.execute(claim, params)
                return await cur.fetchall()
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
                    return []
                cur = await conn.execute(claim, {**params, "limit": granted})
                rows = await cur.fetchall()
                if len(rows) < granted:
                    await conn.execute(
                        self._schema.render(q.RETURN_RATE_TOKENS),
                        {"queue": queue.name, "unused": granted - len(rows)},
                    )
                return rows

    def _start_job(self, loop: _QueueLoop, row: tuple[Any, ...]) -> None:
        assert self._tg is not None
        try:
            job = job_from_row(row)
        except Exception as exc:  # a row written by hand that is not a valid job
            self._record(
                _Outcome(row[0], row[7], "failed", f"invalid job row, not run: {exc}", None, None)
            )
            return
        running = _Running(job)
        loop.running.add(running)
        self._tg.start_soon(self._run_job, loop, running)

    # --- running a job -------------------------------------------------------------------

    def _allowed(self, name: str) -> bool:
        from chancy_core.job import registered_jobs

        if self.allow is None or name in registered_jobs:
            return True
        return any(name.startswith(prefix + ".") for prefix in self.allow)

    async def _run_job(self, loop: _QueueLoop, running: _Running) -> None:
        job = running.job
        error: BaseException | None = None
        result: Any = None
        permanent = True  # errors before the function runs: another attempt cannot help
        try:
            if not self._allowed(job.func):
                raise JobNotAllowedError(
                    f"this worker may not run {job.func}: it is not under an allowed module"
                    f" prefix ({', '.join(self.allow or ()) or 'none'}) nor registered with"
                    " @job. Add its module to the worker's allow-list"
                )
            func = resolve_function(job.func)
            seconds = min(
                (lim.value for lim in job.limits if lim.type_ is Limit.Type.TIME), default=None
            )
            kwargs = job.kwargs or {}
            permanent = False
            if self._has["chancy_job_starting"]:
                await call_event(self._hooks.chancy_job_starting, worker=self, job=job)
            with running.scope:
                if seconds is not None:
                    running.scope.deadline = anyio.current_time() + seconds
                async with AsyncExitStack() as stack:
                    if self._has["chancy_job_wrap"]:
                        for cm in self._hooks.chancy_job_wrap(worker=self, job=job):
                            if cm is not None:
                                await stack.enter_async_context(cm)
                    try:
                        result = await loop.executor.run(job, func, kwargs)
                    except TypeError:
                        permanent = not _accepts(func, kwargs)
                        raise
            if running.scope.cancelled_caught:
                if running.stop_reason == "shutdown":
                    return  # released to run again by the shutdown
                if running.stop_reason == "cancel":
                    raise JobCancelled(f"job {job.id} was cancelled while running")
                raise TimeLimitExceeded(
                    f"job {job.id} exceeded its time limit of {seconds}s and was stopped"
                )
        except Exception as exc:
            error = exc
        finally:
            loop.running.discard(running)
            if loop.more:
                loop.poke()
        await self._complete(job, error, result, permanent)

    async def _complete(
        self, job: QueuedJob, error: BaseException | None, result: Any, permanent: bool
    ) -> None:
        scheduled_at: datetime | None = None
        if error is None:
            state = QueuedJob.State.SUCCEEDED
        elif permanent:
            state = QueuedJob.State.FAILED
        else:
            decision = self._hooks.chancy_retry_decision(worker=self, job=job, error=error)
            if isinstance(decision, datetime):
                state = QueuedJob.State.RETRYING
                scheduled_at = decision
            else:
                state = QueuedJob.State.FAILED
        text = None if error is None else "".join(traceback.format_exception(error)).strip()
        meta_before = json.dumps(job.meta) if self._meta_hooks else None
        done = QueuedJob(**{**job.__dict__, "state": state})
        if self._has["chancy_job_completed"]:
            await call_event(
                self._hooks.chancy_job_completed, worker=self, job=done, error=error, result=result
            )
        meta = json.dumps(done.meta) if self._meta_hooks else None
        self._record(
            _Outcome(
                uuid.UUID(job.id),
                job.attempts,
                state.value,
                text,
                scheduled_at,
                meta if meta != meta_before else None,
            )
        )

    # --- writing outcomes ----------------------------------------------------------------

    def _record(self, outcome: _Outcome) -> None:
        self._outcomes.append(outcome)
        self._outcome_ready.set()

    async def _write_outcomes(self) -> None:
        while True:
            await self._outcome_ready.wait()
            if len(self._outcomes) < self.completion_batch:
                await anyio.sleep(self.completion_delay)
            await self._flush()

    async def _flush(self) -> None:
        while self._outcomes:
            batch = self._outcomes[: self.completion_batch]
            params = {
                "ids": [o.id for o in batch],
                "attempts": [o.attempt for o in batch],
                "states": [o.state for o in batch],
                "errors": [o.error for o in batch],
                "scheduled_at": [o.scheduled_at for o in batch],
                "metas": [o.meta for o in batch],
                "worker_id": self.worker_id,
                "channel": self._schema.channel,
            }
            statement = self._schema.render(q.COMPLETE_JOBS)
            await self._retrying("writing outcomes", partial(self._with_conn, statement, params))
            del self._outcomes[: len(batch)]
        self._outcome_ready = anyio.Event()

    # --- introspection -------------------------------------------------------------------

    @property
    def running_jobs(self) -> list[QueuedJob]:
        """The jobs this worker is executing right now."""
        return [r.job for loop in self.queues.values() for r in loop.running]

    def __repr__(self) -> str:
        return f"Worker({self.worker_id!r}, queues={sorted(self.queues)!r})"
