"""Django's ``task_started`` and ``task_finished`` signals, sent by the chancy worker.

:class:`DjangoTaskSignals` is a chancy plugin: on the worker that runs a Django task it
sends

* ``task_started`` from ``chancy_job_starting``: the job is claimed (``running`` in the
  database, ``attempts`` counting this attempt) and its function has not started yet;
  the ``TaskResult`` is ``RUNNING``;
* ``task_finished`` from ``chancy_job_completed``: the attempt's outcome has been written
  and accepted by the database; the ``TaskResult`` is ``SUCCESSFUL`` (with its return
  value) or ``FAILED`` (with the attempt's error last in ``errors``). For a ``FAILED``
  result the signal is sent while the error is being handled, so receivers see it in
  ``sys.exc_info()`` (as with Django's immediate backend). An attempt that fails and is
  retried is not finished: no ``task_finished`` is sent for it (its next attempt sends
  ``task_started`` again).

The sender is :class:`~chancy_plugin_django.backend.ChancyBackend`. Receivers run in the
worker's process (not in a process-executor child), one at a time, in one thread of the
plugin's own: they may use the ORM. Stale database connections of that thread are closed
before and after each signal, as around a request. The worker waits for the receivers
(``task_started``'s before the task runs), so keep them quick.

``manage.py chancy_worker`` (any app from :func:`chancy_plugin_django.get_app`) has this
plugin; add ``DjangoTaskSignals()`` to ``plugins=[...]`` of a ``Chancy`` you build
yourself. ``task_enqueued`` is sent by the backend, in the enqueuing process.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chancy_core import Outcome, QueuedJob, hookimpl
from chancy_core.hookspecs import WorkerHandle

__all__ = ["NAME", "DjangoTaskSignals"]

log = logging.getLogger(__name__)

NAME = "django_task_signals"
"""The name the plugin is registered under."""


class DjangoTaskSignals:
    """Sends Django's ``task_started`` and ``task_finished`` for the Django tasks a worker
    runs (jobs of :data:`~chancy_plugin_django.backend.RUN_TASK`); other jobs are ignored."""

    name = NAME

    def __init__(self) -> None:
        self._thread: ThreadPoolExecutor | None = None

    def describe(self) -> str:
        """For the worker's start-up summary."""
        return "task_started/task_finished for Django tasks"

    async def _in_thread(self, func: Callable[[], None]) -> None:
        """Run ``func`` in the plugin's one thread (Django's connections are per thread),
        with stale connections closed around it."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="chancy-django-signals")

        def run() -> None:
            from django.db import close_old_connections

            close_old_connections()
            try:
                func()
            finally:
                close_old_connections()

        await asyncio.get_running_loop().run_in_executor(self._thread, run)

    @hookimpl
    async def chancy_job_starting(self, worker: WorkerHandle, job: QueuedJob) -> None:
        """``task_started``, before the task's function runs."""
        from chancy_plugin_django.backend import RUN_TASK

        if job.func != RUN_TASK:
            return

        def send() -> None:
            from chancy_plugin_django.backend import ChancyBackend
            from chancy_plugin_django.compat import task_started

            result = _result_or_none(job, worker_id=worker.worker_id)
            if result is not None:
                task_started.send(ChancyBackend, task_result=result)

        await self._in_thread(send)

    @hookimpl
    async def chancy_job_completed(
        self, worker: WorkerHandle, job: QueuedJob, outcome: Outcome
    ) -> None:
        """``task_finished``, once a final outcome (succeeded or failed) is written."""
        from chancy_plugin_django.backend import RUN_TASK

        if job.func != RUN_TASK or outcome.state not in (
            QueuedJob.State.SUCCEEDED,
            QueuedJob.State.FAILED,
        ):
            return
        error = outcome.error

        def send() -> None:
            from django.utils import timezone

            from chancy_plugin_django.backend import ChancyBackend
            from chancy_plugin_django.compat import task_finished

            errors = list(job.errors)
            if error is not None:  # the completion's error is not in job.errors yet
                text = "".join(traceback.format_exception(error)).strip()
                errors.append({"attempt": job.attempts, "traceback": text})
            result = _result_or_none(
                job, worker_id=worker.worker_id, errors=errors, finished_at=timezone.now()
            )
            if result is None:
                return
            if error is None:
                task_finished.send(ChancyBackend, task_result=result)
                return
            saved = error.__traceback__
            try:
                raise error  # receivers see the error in sys.exc_info(), as in Django's own
            except BaseException:
                task_finished.send(ChancyBackend, task_result=result)
            finally:
                error.__traceback__ = saved  # the re-raise added this frame: take it back

        await self._in_thread(send)


def _result_or_none(job: QueuedJob, **overrides: Any) -> Any:
    """The job's ``TaskResult``, or ``None`` when it names no Django task (such a job is
    refused by the runner, and no signal is sent for it)."""
    from chancy_plugin_django.backend import task_result
    from chancy_plugin_django.compat import TaskResultDoesNotExist

    try:
        return task_result(job, **overrides)
    except (TaskResultDoesNotExist, ImportError, KeyError, TypeError) as exc:
        log.debug("job %s runs no Django task (%s): no signal sent", job.id, exc)
        return None


def worker_plugins(given: list[Any]) -> list[Any]:
    """``given`` plus a :class:`DjangoTaskSignals`, unless one is there already."""
    if any(getattr(p, "name", None) == NAME for p in given):
        return list(given)
    return [*given, DjangoTaskSignals()]
