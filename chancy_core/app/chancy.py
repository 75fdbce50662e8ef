"""The :class:`Chancy` facade: options, plugins, and the public API over its parts.

Each method is a few lines over :class:`~chancy_core.app.database.Database` (connections
and the two drivers), :class:`~chancy_core.app.pushing.Pusher`, :mod:`chancy_core.app.waiting`
and the operations of :mod:`chancy_core.ops` and :mod:`chancy_core.admin`. A method that
runs one operation is declared once with :func:`~chancy_core.app.twins.twin`, which makes
it and its sync twin.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Self, TypeVar

import pluggy
import psycopg
from psycopg_pool import AsyncConnectionPool

from chancy_core import admin, hooks, ops
from chancy_core import sql as q
from chancy_core.admin import JobPage, QueueStats, StateFilter, WorkerInfo
from chancy_core.app import waiting
from chancy_core.app.database import AsyncExecutor, Database, SyncExecutor
from chancy_core.app.dsn import check_dsn, mask_dsn
from chancy_core.app.pushing import Pusher, check_target
from chancy_core.app.twins import twin
from chancy_core.connection import ConnectionSettings
from chancy_core.errors import ConfigurationError
from chancy_core.job import IsAJob, Job, QueuedJob, Reference
from chancy_core.migrations import MigrationSet, apply, load_migrations
from chancy_core.ops import Operation
from chancy_core.plugins import build_plugin_manager
from chancy_core.queue import Queue

__all__ = ["Chancy"]

T = TypeVar("T")
Pushable = Job | IsAJob[..., Any]


class Chancy:
    """A chancy application: where jobs are pushed, read and administered.

    ``dsn`` is resolved in this order: the argument, ``$CHANCY_DSN``, else an
    embedded PostgreSQL (see :mod:`chancy_core.embedded`). Use it as an async
    or a sync context manager to open and close its connection pool::

        async with Chancy("postgresql://localhost/app") as chancy:
            await chancy.migrate()
            ref = await chancy.push(my_job)

    Several apps with different ``prefix`` share one database without
    colliding. ``plugins`` are plugin instances; installed plugins are also
    discovered (see :mod:`chancy_core.plugins`).

    Connections (see :mod:`chancy_core.connection`): ``connection_options`` are
    libpq parameters (and psycopg's ``prepare_threshold``) for every connection,
    over TCP keepalive defaults; ``statement_timeout`` (seconds, ``None``: the
    server's) bounds each statement on the server and ``call_timeout`` (default
    ``statement_timeout + 5``) each call on the client, which then raises
    :class:`~chancy_core.errors.DatabaseUnavailableError`. ``pgbouncer`` turns
    PgBouncer (transaction mode) support on or off, ``None`` detects it (also
    ``?pgbouncer=true`` in the DSN); ``listen_dsn`` is a direct DSN for the
    connections that LISTEN (and migrations) behind PgBouncer.
    """

    require_declared_queues: bool = True
    """Whether pushing to a queue that is not declared fails (QueueNotFoundError). Set it
    to ``False`` on an app to let such jobs wait until the queue is declared."""

    check_kwargs_on_push: bool = True
    """Whether push checks each job's kwargs against its function's signature when the
    function is known (registered with ``@job`` or in a module already imported)."""

    def __init__(
        self,
        dsn: str | None = None,
        *,
        plugins: Sequence[object] | None = None,
        prefix: str = "chancy_",
        autoload_plugins: bool | None = None,
        min_connections: int = 1,
        max_connections: int = 10,
        connect_timeout: float = 10.0,
        connection_options: dict[str, Any] | None = None,
        statement_timeout: float | None = ConnectionSettings.statement_timeout,
        call_timeout: float | None = None,
        pgbouncer: bool | None = None,
        listen_dsn: str | None = None,
    ) -> None:
        self.schema = q.Schema(prefix)
        settings = ConnectionSettings(
            dict(connection_options or {}), statement_timeout, pgbouncer, listen_dsn
        )
        if call_timeout is not None and not call_timeout > 0:
            raise ConfigurationError(f"call_timeout must be > 0 seconds, not {call_timeout!r}")
        if listen_dsn is not None:
            check_dsn(listen_dsn, settings)
        if dsn is not None:
            dsn = check_dsn(dsn, settings)
        if not 1 <= min_connections <= max_connections:
            raise ConfigurationError(
                "need 1 <= min_connections <= max_connections, got"
                f" {min_connections} and {max_connections}"
            )
        self._db = Database(
            dsn,
            settings,
            self.schema,
            min_connections=min_connections,
            max_connections=max_connections,
            connect_timeout=connect_timeout,
            call_timeout=call_timeout or (statement_timeout or 55.0) + 5.0,
        )
        self.plugins: pluggy.PluginManager = build_plugin_manager(
            plugins, autoload=autoload_plugins
        )
        self._pusher = Pusher(self)

    # --- connections (chancy_core.app.database) ----------------------------------------------

    @property
    def settings(self) -> ConnectionSettings:
        """The connections' options, deadlines and PgBouncer mode."""
        return self._db.settings

    @property
    def call_timeout(self) -> float:
        """Seconds one call (push, get, cancel, ...) may take before it gives up."""
        return self._db.call_timeout

    @call_timeout.setter
    def call_timeout(self, seconds: float) -> None:
        self._db.call_timeout = seconds

    @property
    def min_connections(self) -> int:
        """The pools' minimum size."""
        return self._db.min_connections

    @property
    def max_connections(self) -> int:
        """The pools' maximum size."""
        return self._db.max_connections

    @property
    def connect_timeout(self) -> float:
        """Seconds a new connection may take."""
        return self._db.connect_timeout

    @property
    def dsn(self) -> str:
        """The resolved DSN (starting the embedded server if that is the default)."""
        return self._db.dsn

    @property
    def notifications(self) -> bool:
        """Whether LISTEN/NOTIFY works on :meth:`connect`'s connections: not behind
        PgBouncer without a ``listen_dsn`` (then waiters and workers must poll)."""
        return self._db.notifications

    @property
    def pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        """The async pool; raises if the app was not opened."""
        return self._db.pool

    async def connect(self, *, statement_timeout: bool = True) -> psycopg.AsyncConnection[Any]:
        """Open a dedicated connection (autocommit), outside the pool: on ``listen_dsn``
        behind PgBouncer when given."""
        return await self._db.connect(statement_timeout=statement_timeout)

    def sync_connect(self) -> psycopg.Connection[Any]:
        """Open a dedicated sync connection (autocommit), outside the pool."""
        return self._db.sync_connect()

    async def open(self) -> None:
        """Open the async connection pool (done by ``async with``)."""
        await self._db.open()

    async def close(self) -> None:
        """Close the pools."""
        await self._db.close()

    def sync_open(self) -> None:
        """Open the sync connection pool (done by ``with`` and by the first ``sync_*`` call)."""
        self._db.sync_open()

    def sync_close(self) -> None:
        """Close the sync pool."""
        self._db.sync_close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __enter__(self) -> Self:
        self.sync_open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sync_close()

    # --- running operations ------------------------------------------------------------------

    async def execute(self, op: Operation[T], *, transaction: bool = False) -> T:
        """Run an operation on a pooled connection (in one transaction if asked), within
        ``call_timeout``."""
        return await self._db.execute(op, transaction=transaction)

    def sync_execute(self, op: Operation[T], *, transaction: bool = False) -> T:
        """Sync twin of :meth:`execute`: on a pooled sync connection (its socket cut at
        ``call_timeout``)."""
        return self._db.sync_execute(op, transaction=transaction)

    async def execute_ex(self, target: AsyncExecutor, op: Operation[T]) -> T:
        """Run an operation on a connection or cursor the caller holds, in whatever
        transaction it is in (the worker's claims, a plugin's transaction), with the same
        error translation as :meth:`execute` but no deadline of its own."""
        return await self._db.run(target, op)

    def sync_execute_ex(self, target: SyncExecutor, op: Operation[T]) -> T:
        """Sync twin of :meth:`execute_ex`."""
        return self._db.run_sync(target, op)

    def connection(self) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """A pooled connection for statements of one's own (plugins' background tasks),
        the whole block within ``call_timeout``: at the deadline the block is cancelled,
        the connection closed, and :class:`DatabaseUnavailableError` raised (a transient
        error: retry later). A lost connection raises it too."""
        return self._db.connection()

    # --- migrations --------------------------------------------------------------------------

    def migration_sets(self) -> list[MigrationSet]:
        """The core's migrations, then each plugin's, in registration order."""
        sets = [load_migrations("core", "chancy_core.migrations.core")]
        found = hooks.collect(self.plugins.hook.chancy_migrations, app=self)
        sets += [s for s in reversed(found) if s]
        return sets

    async def migrate(self) -> list[str]:
        """Apply every pending migration (core and plugins); return the ones applied.

        Idempotent, and safe when several processes call it at once.
        """
        conn = await self.connect(statement_timeout=False)  # an index may take long
        async with conn:
            return await apply(conn, self.schema, self.migration_sets())

    # --- pushing (chancy_core.app.pushing) ---------------------------------------------------

    async def push(self, job: Pushable) -> Reference:
        """Push one job; return its reference (or the existing job's, for a duplicate
        ``unique_key``)."""
        return (await self.push_many([job]))[0]

    def sync_push(self, job: Pushable) -> Reference:
        """Sync twin of :meth:`push`."""
        return self.sync_push_many([job])[0]

    async def push_many(
        self, jobs: Iterable[Pushable], *, batch_size: int = 1000
    ) -> list[Reference]:
        """Push many jobs in one transaction, one statement per ``batch_size`` jobs (from
        :data:`~chancy_core.app.COPY_MIN_JOBS` jobs without unique keys: one binary
        ``COPY``)."""
        op, transaction = self._pusher.push(jobs, batch_size)
        return await self._db.execute(op, transaction=transaction, what="push")

    def sync_push_many(
        self, jobs: Iterable[Pushable], *, batch_size: int = 1000
    ) -> list[Reference]:
        """Sync twin of :meth:`push_many`."""
        op, transaction = self._pusher.push(jobs, batch_size)
        return self._db.sync_execute(op, transaction=transaction, what="push")

    async def push_many_ex(
        self,
        target: psycopg.AsyncConnection[Any] | psycopg.AsyncCursor[Any],
        jobs: Iterable[Pushable],
        *,
        batch_size: int = 1000,
    ) -> list[Reference]:
        """Push jobs inside the caller's transaction (on its connection or cursor):
        a rollback leaves none of them behind."""
        check_target(target, sync=False)
        return await self._db.run(target, self._pusher.push_ex(jobs, batch_size))

    def sync_push_many_ex(
        self,
        target: psycopg.Connection[Any] | psycopg.Cursor[Any],
        jobs: Iterable[Pushable],
        *,
        batch_size: int = 1000,
    ) -> list[Reference]:
        """Sync twin of :meth:`push_many_ex` (e.g. inside a Django or Flask transaction)."""
        check_target(target, sync=True)
        return self._db.run_sync(target, self._pusher.push_ex(jobs, batch_size))

    # --- reading, cancelling and waiting (chancy_core.app.waiting) ---------------------------

    @twin()
    def get_job(self, ref: Reference | str) -> Operation[QueuedJob | None]:
        """The job's current state, or ``None`` if it does not exist."""
        return admin.get_job_op(self.schema, ref)

    sync_get_job = get_job.sync

    @twin()
    def get_jobs(self, refs: Sequence[Reference | str]) -> Operation[list[QueuedJob | None]]:
        """Many jobs in one query, in the order of ``refs`` (``None`` where missing)."""
        return admin.get_jobs_op(self.schema, refs)

    @twin(transaction=True)
    def cancel_job(self, ref: Reference | str) -> Operation[bool]:
        """Cancel a job.

        A pending or retrying job fails at once and never starts; a running job
        is stopped by its worker (as a time limit would stop it) and fails. Both
        get an error entry saying they were cancelled, and are not retried. A
        job that already finished is left as it is. Returns whether anything was
        cancelled.
        """
        return admin.cancel_job_op(self.schema, ref)

    sync_cancel_job = cancel_job.sync

    async def wait_for_job(
        self, ref: Reference | str, *, timeout: float | None = None, interval: float = 1.0
    ) -> QueuedJob:
        """Wait until the job succeeds or fails, and return it.

        Woken by a notification when the job finishes, and checks every
        ``interval`` seconds in case notifications are lost (every 0.2 s at most
        when notifications cannot work: behind PgBouncer without ``listen_dsn``).
        Raises :class:`TimeoutError` after ``timeout`` seconds,
        :class:`~chancy_core.errors.DatabaseUnavailableError` if the database did not
        answer by then (each read is bounded by ``call_timeout``, and a connection that
        stops answering is replaced), and :class:`~chancy_core.errors.JobNotFoundError`
        if the job vanishes.
        """
        plan = waiting.Wait(self._db, ref, timeout, interval)
        return await waiting.wait_for_job(self._db, plan)

    def sync_wait_for_job(
        self, ref: Reference | str, *, timeout: float | None = None, interval: float = 1.0
    ) -> QueuedJob:
        """Sync twin of :meth:`wait_for_job`."""
        return waiting.sync_wait_for_job(self._db, waiting.Wait(self._db, ref, timeout, interval))

    async def wait_for_jobs(
        self,
        refs: Sequence[Reference | str],
        *,
        timeout: float | None = None,
        interval: float = 1.0,
    ) -> list[QueuedJob]:
        """Wait until every job finishes; returns them in the order of ``refs``. Raises
        :class:`TimeoutError` when ``timeout`` seconds pass first."""
        return [
            await self.wait_for_job(ref, timeout=left, interval=interval)
            for ref, left in zip(refs, _time_left(timeout), strict=False)
        ]

    def sync_wait_for_jobs(
        self,
        refs: Sequence[Reference | str],
        *,
        timeout: float | None = None,
        interval: float = 1.0,
    ) -> list[QueuedJob]:
        """Sync twin of :meth:`wait_for_jobs`."""
        return [
            self.sync_wait_for_job(ref, timeout=left, interval=interval)
            for ref, left in zip(refs, _time_left(timeout), strict=False)
        ]

    @twin()
    def count_jobs(
        self, states: Iterable[QueuedJob.State] = (QueuedJob.State.PENDING,)
    ) -> Operation[dict[tuple[str, QueuedJob.State], int]]:
        """How many jobs each queue has in each of ``states``, keyed ``(queue, state)``.

        Pending and retrying counts read the small fetch index; counting other
        states reads their rows.
        """
        return admin.count_jobs_op(self.schema, states)

    @twin()
    def notify(self, payload: dict[str, Any]) -> Operation[None]:
        """Send an event on the app's channel (workers and waiters listen to it)."""
        return ops.notify(self.schema, json.dumps(payload))

    # --- queues ------------------------------------------------------------------------------

    @twin()
    def declare(self, queue: Queue) -> Operation[Queue]:
        """Create the queue, or update it if it exists; running workers pick up the change."""
        return admin.declare_queue_op(self.schema, queue)

    sync_declare = declare.sync

    @twin()
    def get_queue(self, name: str) -> Operation[Queue | None]:
        """The declared queue named ``name``, or ``None``."""
        return admin.get_queue_op(self.schema, name)

    @twin()
    def get_all_queues(self) -> Operation[list[Queue]]:
        """Every declared queue, by name."""
        return ops.select_queues(self.schema)

    @twin()
    def pause_queue(self, name: str, *, resume_at: datetime | None = None) -> Operation[bool]:
        """Stop workers from starting the queue's jobs, until ``resume_at`` if given (it
        then resumes by itself); returns whether the queue exists."""
        return admin.set_queue_state_op(self.schema, name, Queue.State.PAUSED, resume_at)

    sync_pause_queue = pause_queue.sync

    @twin()
    def resume_queue(self, name: str) -> Operation[bool]:
        """Let workers start the queue's jobs again; returns whether the queue exists."""
        return admin.set_queue_state_op(self.schema, name, Queue.State.ACTIVE)

    sync_resume_queue = resume_queue.sync

    @twin(transaction=True)
    def delete_queue(
        self, name: str, *, purge_jobs: bool = False, keep_jobs: bool = False
    ) -> Operation[bool]:
        """Delete a queue's declaration; returns whether it existed. While the queue holds
        unfinished jobs it refuses (:class:`~chancy_core.errors.JobStateError`), unless
        ``purge_jobs`` (deletes its waiting jobs, cancels its running ones) or ``keep_jobs``
        (they wait until the queue is declared again)."""
        op = admin.delete_queue_op(self.schema, name, purge_jobs=purge_jobs, keep_jobs=keep_jobs)
        self._pusher.forget(name)  # the next push to it checks it again
        return op

    sync_delete_queue = delete_queue.sync

    @twin(transaction=True)
    def update_queue(self, /, name: str, **changes: Any) -> Operation[Queue]:
        """Change only the given settings of a declared queue (``concurrency``,
        ``executor``, ``executor_options``, ``rate_limit``, ``rate_limit_window``,
        ``polling_interval``, ``tags``); returns the queue as it now is."""
        return admin.update_queue_op(self.schema, name, changes)

    sync_update_queue = update_queue.sync

    # --- operating: browse jobs, queues and workers, and act on them (chancy_core.admin) ----

    @twin()
    def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: StateFilter = None,
        func: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Operation[JobPage]:
        """One page of jobs, newest first, filtered by queue, state(s), function and
        creation time (``since <= created_at < until``); pass the page's ``next_cursor``
        as ``cursor`` for the next one. Index-driven at any table size when a queue or a
        state is given (see :mod:`chancy_core.admin`)."""
        flt = admin.JobFilter.of(queue=queue, state=state, func=func, since=since, until=until)
        return admin.list_jobs_op(self.schema, flt, limit=limit, cursor=cursor)

    sync_list_jobs = list_jobs.sync

    @twin()
    def queue_stats(self) -> Operation[list[QueueStats]]:
        """Every declared queue and every queue that has jobs (``queue`` None when it is
        not declared): jobs per state and the oldest waiting job. Counts every row."""
        return admin.queue_stats_op(self.schema)

    sync_queue_stats = queue_stats.sync

    @twin()
    def list_workers(self, *, timeout: float = 60.0) -> Operation[list[WorkerInfo]]:
        """Every registered worker with its heartbeat age and running jobs; ``alive`` when
        it beat within ``timeout`` seconds (the recovery plugin's default)."""
        return admin.list_workers_op(self.schema, timeout=timeout)

    sync_list_workers = list_workers.sync

    @twin(transaction=True)
    def retry_job(self, ref: Reference | str) -> Operation[QueuedJob]:
        """Run a failed (or succeeded) job again: state pending, due now, ``max_attempts``
        raised by one if exhausted, its errors kept. Raises
        :class:`~chancy_core.errors.JobStateError` for a job that has not finished."""
        return admin.retry_job_op(self.schema, ref)

    sync_retry_job = retry_job.sync

    @twin(transaction=True)
    def requeue_job(
        self, ref: Reference | str, *, queue: str | None = None
    ) -> Operation[QueuedJob]:
        """Make a waiting (pending or retrying) job due now, optionally on another queue."""
        return admin.requeue_job_op(self.schema, ref, queue=queue)

    sync_requeue_job = requeue_job.sync

    @twin(transaction=True)
    def set_job_priority(self, ref: Reference | str, priority: int) -> Operation[QueuedJob]:
        """Change a waiting job's priority (higher runs first)."""
        return admin.set_job_priority_op(self.schema, ref, priority)

    sync_set_job_priority = set_job_priority.sync

    @twin(transaction=True)
    def reschedule_job(self, ref: Reference | str, at: datetime) -> Operation[QueuedJob]:
        """Change when a waiting job may start (a timezone-aware datetime)."""
        return admin.reschedule_job_op(self.schema, ref, at)

    sync_reschedule_job = reschedule_job.sync

    @twin(transaction=True)
    def delete_job(self, ref: Reference | str) -> Operation[bool]:
        """Delete a job that is not running (a running one raises
        :class:`~chancy_core.errors.JobStateError`: cancel it first)."""
        return admin.delete_job_op(self.schema, ref)

    sync_delete_job = delete_job.sync

    @twin(transaction=True)
    def retry_jobs(self, /, **filter: Any) -> Operation[int]:
        """Retry every failed job matching the filter (``queue``, ``state``, ``func``,
        ``since``, ``until``; succeeded ones too if ``state`` names them); returns how many.
        Jobs whose unique key an unfinished job holds are skipped."""
        return admin.retry_jobs_op(self.schema, admin.JobFilter.of(**filter))

    sync_retry_jobs = retry_jobs.sync

    @twin(transaction=True)
    def cancel_jobs(self, /, **filter: Any) -> Operation[int]:
        """Cancel every unfinished job matching the filter; returns how many."""
        return admin.cancel_jobs_op(self.schema, admin.JobFilter.of(**filter))

    sync_cancel_jobs = cancel_jobs.sync

    @twin(transaction=True)
    def delete_jobs(self, /, **filter: Any) -> Operation[int]:
        """Delete every job matching the filter that is not running (a filter is required);
        returns how many."""
        return admin.delete_jobs_op(self.schema, admin.JobFilter.of(**filter))

    sync_delete_jobs = delete_jobs.sync

    def __repr__(self) -> str:
        dsn = self._db.resolved
        shown = mask_dsn(dsn) if dsn else "(unresolved)"
        return f"Chancy({shown!r}, prefix={self.schema.prefix!r})"


def _time_left(timeout: float | None) -> Iterator[float | None]:
    """For each wait of :meth:`Chancy.wait_for_jobs` in turn: the seconds left of
    ``timeout`` (``None``: no limit)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        yield None if deadline is None else max(0.0, deadline - time.monotonic())
