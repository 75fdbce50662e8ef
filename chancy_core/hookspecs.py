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
once, at start, which hooks have implementations. Every call goes through
:mod:`chancy_core.hooks`, so pluggy's tracing sees it.

Worker hooks receive a :class:`WorkerHandle`, the part of the worker plugins may
rely on; ``chancy_job_completed`` receives a :class:`~chancy_core.Outcome`, and
``chancy_retry_decision`` may return a :class:`~chancy_core.RetryDecision`.

Besides hooks, the worker reads two plugin attributes once at start (not hooks: facts
about the plugin): ``recovers_dead_workers = True`` (the plugin puts back dead workers'
jobs; without one such plugin the worker warns) and an optional ``describe()`` returning
the short text the start-up summary shows for the plugin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from chancy_core.app import Chancy
    from chancy_core.job import Job, QueuedJob
    from chancy_core.migrations import MigrationSet
    from chancy_core.outcome import Outcome, RetryDecision

__all__ = ["RegisterTask", "WorkerHandle", "WorkerTask", "hookimpl", "hookspec"]

PROJECT = "chancy"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class WorkerHandle(Protocol):
    """What hooks and plugin tasks see of the worker that calls them.

    :class:`chancy_core.Worker` implements it; plugins should rely on nothing else,
    so the worker's internals can change without breaking them."""

    @property
    def worker_id(self) -> str:
        """The worker's unique id (its row in the workers table, ``taken_by`` of its jobs)."""
        ...

    @property
    def app(self) -> Chancy:
        """The app the worker runs jobs of."""
        ...

    @property
    def chancy(self) -> Chancy:
        """The same as :attr:`app` (the name older plugins use)."""
        ...

    @property
    def tags(self) -> frozenset[str]:
        """The worker's tags."""
        ...

    @property
    def is_leader(self) -> bool:
        """Whether this worker leads now (runs the leader-only tasks)."""
        ...

    @property
    def running_jobs(self) -> list[QueuedJob]:
        """The jobs the worker is executing right now."""
        ...

    async def set_leader(self, leader: bool) -> None:
        """Become (or stop being) the leader: start or stop the leader-only tasks. For
        leadership plugins (see :func:`chancy_elects_leader`)."""
        ...


#: A plugin's background task: ``func(worker)`` runs until cancelled.
WorkerTask = Callable[[WorkerHandle], Awaitable[None]]


class RegisterTask(Protocol):
    """The callable passed to :func:`chancy_worker_tasks`."""

    def __call__(self, name: str, func: WorkerTask, *, leader_only: bool = False) -> None:
        """Run ``func(worker)`` in the worker's task group (restarted after a pause if it
        raises); with ``leader_only=True``, only while the worker leads."""
        ...


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
def chancy_worker_started(worker: WorkerHandle) -> None:
    """The worker has registered itself and is about to take jobs.

    May be ``async def``. Runs on every worker.

    :param worker: the worker that started.
    """


@hookspec
def chancy_worker_stopping(worker: WorkerHandle) -> None:
    """The worker has stopped taking jobs and is shutting down.

    Called before running jobs are drained; shielded, with the shutdown
    timeout as deadline. May be ``async def``. Runs on every worker.

    :param worker: the worker that is stopping.
    """


@hookspec
def chancy_worker_tasks(worker: WorkerHandle, register: RegisterTask) -> None:
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
def chancy_elects_leader(worker: WorkerHandle) -> bool | None:
    """Whether a plugin elects a leader among workers.

    When an implementation returns ``True``, leader-only tasks wait until the
    plugin calls ``await worker.set_leader(True)``. Stops at first non-None
    result. The core's default returns ``False``: each worker leads itself.

    Sync only. Runs on every worker, once at start.

    :param worker: the worker starting.
    :returns: ``True`` if this plugin elects leaders.
    """


@hookspec
def chancy_leadership_changed(worker: WorkerHandle, is_leader: bool) -> None:
    """This worker became the leader, or stopped being it.

    May be ``async def``. Runs on the worker whose leadership changed.

    :param worker: the worker.
    :param is_leader: whether it now leads.
    """


# -------------------------------------------------------------------------------------------
# Running jobs
# -------------------------------------------------------------------------------------------


@hookspec
def chancy_job_starting(worker: WorkerHandle, job: QueuedJob) -> None:
    """A claimed job is about to run.

    Changes made here to ``job.meta`` (in place: ``job.meta[key] = ...``) are saved
    with the attempt's outcome, as the job's own are.

    May be ``async def``. Runs on the worker that claimed the job.

    :param worker: the worker running the job.
    :param job: the job, already ``running``, with ``attempts`` counting this attempt.
    """


@hookspec
def chancy_job_wrap(
    worker: WorkerHandle, job: QueuedJob
) -> AbstractAsyncContextManager[None] | None:
    """Wrap a job's execution in an async context manager.

    The worker enters every returned context manager around the executor's
    run of the job, on the worker's event loop, and exits them with the job's
    exception, if any. They nest in pluggy's call order: a ``tryfirst``
    implementation (else the last registered) is outermost. The job's time
    limit covers them. Use it for tracing or per-job resources (for timing,
    :class:`~chancy_core.Outcome` carries ``run_seconds``). An implementation,
    or a context manager entering or exiting, that raises is logged and
    skipped: it never fails the job. An exit that returns true does not hide
    the job's exception: a wrapper cannot turn a failed attempt into a success.

    Sync only (it returns the async context manager). Runs on the worker
    running the job.

    :param worker: the worker running the job.
    :param job: the job about to run.
    :returns: an async context manager, or ``None``.
    """


@hookspec(firstresult=True)
def chancy_retry_decision(
    worker: WorkerHandle, job: QueuedJob, error: BaseException
) -> RetryDecision | datetime | bool | None:
    """Decide whether and when a failed job runs again.

    Called when an attempt raised (or hit a limit). Stops at first non-None
    result. Return a timezone-aware ``datetime`` to retry at that time, a
    :class:`~chancy_core.RetryDecision` to retry and set keys of the job's
    ``meta`` in the same write (``job`` is frozen: return meta changes, do not
    make them in place), or ``False`` to fail the job for good. The core's
    default retries at once while ``job.attempts < job.max_attempts``. Not
    called for errors no attempt can avoid (a cancellation, a function that is
    not allowed or cannot be imported, kwargs that do not fit its signature):
    those fail at once. An implementation that raises is logged and the core's
    default decides.

    Sync only. Runs on the worker that ran the job.

    :param worker: the worker that ran the job.
    :param job: the job, with ``attempts`` counting the failed attempt.
    :param error: what the attempt raised.
    :returns: a ``RetryDecision`` or a ``datetime`` to retry, ``False`` to give up, or
        ``None`` to let others decide.
    """


@hookspec
def chancy_job_completed(worker: WorkerHandle, job: QueuedJob, outcome: Outcome) -> None:
    """An attempt of a job ended, and the database accepted its outcome.

    Called after the outcome was written (in the worker's batch, fenced on the
    claim that ran the job), and only if the write was accepted: an outcome
    the fence refused (the job was given to another worker meanwhile) is never
    reported. ``outcome.state`` is ``succeeded``, ``failed`` or ``retrying``
    (as ``job.state``); ``outcome.error`` is what the attempt raised,
    ``outcome.result`` what the function returned, and ``outcome.run_seconds``
    and ``outcome.wait_seconds`` how long it ran and how long it waited to be
    claimed. A job stopped by the worker's shutdown is put back to ``pending``
    and not reported. Changes to ``job.meta`` here are not saved.

    May be ``async def``. Runs on the worker that ran the job, in its
    completion task: keep it quick (a slow hook delays the next batch).

    :param worker: the worker that ran the job.
    :param job: the job with its new state and saved ``meta``.
    :param outcome: how the attempt ended (a frozen :class:`~chancy_core.Outcome`).
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
