"""Every hook chancy-core calls, documented where it is declared.

Plugins implement hooks with :data:`chancy_core.hookimpl`; an implementation
may accept any subset of a hook's arguments. Two kinds of hook exist:

* **Decision hooks** (``firstresult``) are synchronous: the first
  implementation to return something other than ``None`` decides. The core
  registers a ``trylast`` default for each, so plugins override it.
* **Event hooks** may be ``async def``; each implementation is called (and
  awaited) in turn, and one that raises is logged and skipped: a plugin never
  kills a worker.

A hook nobody implements costs nothing on the per-job path: the worker checks
once, at start, which hooks have implementations.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from chancy_core.app import Chancy
    from chancy_core.job import Job, QueuedJob
    from chancy_core.migrations import MigrationSet
    from chancy_core.worker import Worker

__all__ = ["hookimpl", "hookspec"]

PROJECT = "chancy"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: ``register(name, func, *, leader_only=False)``: the callable passed to
#: :func:`chancy_worker_tasks`. ``func(worker)`` is a coroutine function that
#: runs until cancelled.
RegisterTask = Callable[..., None]
WorkerTask = Callable[["Worker"], Awaitable[None]]


# -------------------------------------------------------------------------------------------
# Database
# -------------------------------------------------------------------------------------------


@hookspec
def chancy_migrations(app: Chancy) -> MigrationSet | None:
    """Contribute a component's migrations to ``app.migrate()``.

    Called by :meth:`Chancy.migrate`, which applies each returned set in
    registration order after the core's. Use
    :func:`chancy_core.migrations.load_migrations` to read ``NNNN_name.sql``
    files from a package; their ``{name}`` placeholders get the app's prefix.

    Sync only. Runs wherever ``migrate()`` is called.

    :param app: the application being migrated.
    :returns: a :class:`~chancy_core.migrations.MigrationSet`, or ``None``.
    """


# -------------------------------------------------------------------------------------------
# Pushing jobs
# -------------------------------------------------------------------------------------------


@hookspec
def chancy_before_push(app: Chancy, jobs: list[Job]) -> None:
    """Annotate or adjust jobs about to be inserted.

    Called once per push call (``push``, ``push_many``, ``push_many_ex``) with
    the whole batch, before anything is written. Replace items in place, e.g.
    ``jobs[i] = jobs[i].with_meta({**jobs[i].meta, "mine": ...})``; keep
    plugin state under the plugin's own key of ``Job.meta``.

    Sync only. Runs in the pushing process.

    :param app: the application pushing.
    :param jobs: the jobs, which the implementation may replace in place.
    """


# -------------------------------------------------------------------------------------------
# Worker lifecycle
# -------------------------------------------------------------------------------------------


@hookspec
def chancy_worker_started(worker: Worker) -> None:
    """The worker has registered itself and is about to take jobs.

    May be ``async def``. Runs on every worker.

    :param worker: the worker that started.
    """


@hookspec
def chancy_worker_stopping(worker: Worker) -> None:
    """The worker has stopped taking jobs and is shutting down.

    Called before running jobs are drained; shielded, with the shutdown
    timeout as deadline. May be ``async def``. Runs on every worker.

    :param worker: the worker that is stopping.
    """


@hookspec
def chancy_worker_tasks(worker: Worker, register: RegisterTask) -> None:
    """Register background tasks to run in the worker's task group.

    Call ``register(name, func, leader_only=False)`` for each task;
    ``func(worker)`` is a coroutine function that runs until cancelled (loop
    and sleep inside it). A task that raises is logged and restarted after a
    pause. With ``leader_only=True`` the task runs only while this worker is
    the leader (see :func:`chancy_elects_leader`); without a leadership
    plugin every worker is its own leader.

    Sync only (the tasks themselves are async). Runs on every worker.

    :param worker: the worker starting.
    :param register: the callable that registers one task.
    """


@hookspec(firstresult=True)
def chancy_elects_leader(worker: Worker) -> bool | None:
    """Whether a plugin elects a leader among workers.

    When an implementation returns ``True``, leader-only tasks wait until the
    plugin calls ``await worker.set_leader(True)``. Stops at first non-None
    result. The core's default returns ``False``: each worker leads itself.

    Sync only. Runs on every worker, once at start.

    :param worker: the worker starting.
    :returns: ``True`` if this plugin elects leaders.
    """


@hookspec
def chancy_leadership_changed(worker: Worker, is_leader: bool) -> None:
    """This worker became the leader, or stopped being it.

    May be ``async def``. Runs on the worker whose leadership changed.

    :param worker: the worker.
    :param is_leader: whether it now leads.
    """


# -------------------------------------------------------------------------------------------
# Running jobs
# -------------------------------------------------------------------------------------------


@hookspec
def chancy_job_starting(worker: Worker, job: QueuedJob) -> None:
    """A claimed job is about to run.

    May be ``async def``. Runs on the worker that claimed the job.

    :param worker: the worker running the job.
    :param job: the job, already ``running``, with ``attempts`` counting this attempt.
    """


@hookspec
def chancy_job_wrap(worker: Worker, job: QueuedJob) -> AbstractAsyncContextManager[None] | None:
    """Wrap a job's execution in an async context manager.

    The worker enters every returned context manager around the executor's
    run of the job, on the worker's event loop, and exits them with the job's
    exception, if any. They nest in pluggy's call order: a ``tryfirst``
    implementation (else the last registered) is outermost. The job's time
    limit covers them. Use it for tracing, timing or per-job resources. An
    implementation, or a context manager entering or exiting, that raises is
    logged and skipped: it never fails the job.

    Sync only (it returns the async context manager). Runs on the worker
    running the job.

    :param worker: the worker running the job.
    :param job: the job about to run.
    :returns: an async context manager, or ``None``.
    """


@hookspec(firstresult=True)
def chancy_retry_decision(
    worker: Worker, job: QueuedJob, error: BaseException
) -> datetime | bool | None:
    """Decide whether and when a failed job runs again.

    Called when an attempt raised (or hit a limit). Stops at first non-None
    result. Return a timezone-aware ``datetime`` to retry at that time, or
    ``False`` to fail the job for good. The core's default retries at once
    while ``job.attempts < job.max_attempts``. Not called for errors no
    attempt can avoid (a cancellation, a function that is not allowed or
    cannot be imported, kwargs that do not fit its signature): those fail at
    once. An implementation that raises is logged and the core's default
    decides. Changes made to ``job.meta`` here are saved with the outcome.

    Sync only. Runs on the worker that ran the job.

    :param worker: the worker that ran the job.
    :param job: the job, with ``attempts`` counting the failed attempt.
    :param error: what the attempt raised.
    :returns: when to retry, ``False`` to give up, or ``None`` to let others decide.
    """


@hookspec
def chancy_job_completed(
    worker: Worker, job: QueuedJob, error: BaseException | None, result: Any
) -> None:
    """An attempt of a job ended, and its outcome is decided.

    ``job.state`` is the state being written (``succeeded``, ``failed``,
    ``retrying`` or ``pending``); ``error`` is what the attempt raised, or
    ``None``. Called before the outcome is written, in the worker's batch.

    May be ``async def``. Runs on the worker that ran the job.

    :param worker: the worker that ran the job.
    :param job: the job with its new state.
    :param error: the exception, or ``None`` on success.
    :param result: what the function returned (``None`` on failure).
    """


@hookspec
def chancy_register_commands(subparsers: Any) -> None:
    """Add sub-commands to the ``chancy`` command line.

    ``subparsers`` is an :mod:`argparse` sub-parsers object: call
    ``subparsers.add_parser(...)`` and set the handler on the new parser with
    ``set_defaults(handler=handler)``, where ``async def handler(app, args) -> int``
    gets a connected :class:`Chancy` and returns the exit status. A command that
    needs no connection (it opens its own, or none) sets ``local=func`` instead:
    ``func(args, plugin_manager) -> int`` runs without an event loop (a
    ``ChancyError`` it raises is printed as for a handler).

    Sync only. Runs in the ``chancy`` command.

    :param subparsers: where to add the sub-commands.
    """
