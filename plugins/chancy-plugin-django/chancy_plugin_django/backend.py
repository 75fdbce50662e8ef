"""A backend for Django's Tasks framework that pushes tasks to chancy.

::

    TASKS = {"default": {"BACKEND": "chancy_plugin_django.backend.ChancyBackend"}}

``my_task.enqueue(...)`` inserts a chancy job on Django's own database
connection, inside the caller's transaction: a rollback of the surrounding
``transaction.atomic()`` leaves no job behind. Workers (``manage.py
chancy_worker``) run it; ``my_task.get_result(id)`` reads its status and errors
back from chancy's jobs table.

Signals: ``task_enqueued`` when the enqueuing transaction commits; ``task_started`` and
``task_finished`` on the worker (:mod:`chancy_plugin_django.signals`).

The Django task's queue name is the chancy queue, its priority the chancy
priority (higher runs first in both), ``run_after`` the job's ``scheduled_at``.
``OPTIONS``: ``max_attempts`` (default 1; attempts after a failure need the retry
plugin's policy or ``max_attempts > 1``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from django.apps import apps
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from chancy_core import Job
from chancy_plugin_django import push_on_django
from chancy_plugin_django.compat import (
    BaseTaskBackend,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_enqueued,
)
from chancy_plugin_django.conf import chancy_settings

__all__ = ["RUN_TASK", "STATUSES", "ChancyBackend", "return_value", "task_result"]

RUN_TASK = "chancy_plugin_django.runner.run_task"
"""The chancy function every Django task runs through (it imports and calls the task)."""

STATUSES: dict[str, TaskResultStatus] = {
    "pending": TaskResultStatus("READY"),
    "retrying": TaskResultStatus("READY"),  # "ready to be executed again"
    "running": TaskResultStatus("RUNNING"),
    "succeeded": TaskResultStatus("SUCCESSFUL"),
    "failed": TaskResultStatus("FAILED"),
}
"""Chancy's job states as Django's task result statuses."""

# The exception line of a formatted traceback: "module.Class: message" or a bare "Class".
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::\s|:?$)")


def return_value(job: Any) -> Any:
    """The value the job's function returned, for ``TaskResult.return_value``.

    chancy-core stores it as JSON in the job's ``result`` (``None`` until the task
    succeeded, or when the worker could not store it: then the row's ``result_error``
    says why)."""
    return job.result


def _exception_path(traceback: str) -> str:
    """The exception class named by a formatted traceback (its last exception line)."""
    found = "Exception"
    for line in traceback.splitlines():
        match = _EXCEPTION_LINE.match(line)
        if match:
            found = match.group(1)
    return found if "." in found else f"builtins.{found}"


def _pushed_at(job_id: uuid.UUID) -> datetime:
    """When the job was pushed: chancy's ids are UUIDv7, whose first 48 bits are Unix ms."""
    return datetime.fromtimestamp((job_id.int >> 80) / 1000, tz=UTC)


class ChancyBackend(BaseTaskBackend):
    """Django task backend: tasks become chancy jobs, results are read from chancy."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.max_attempts = self.options.get("max_attempts", 1)
        unknown = set(self.options) - {"max_attempts"}
        if unknown or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS'] takes only max_attempts (a positive integer);"
                f" got {self.options!r}"
            )

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        """Django's system check: the app must be installed (results are read through it)."""
        yield from super().check(**kwargs)
        if not apps.is_installed("chancy_plugin_django"):
            yield checks.Error(
                f"TASKS[{self.alias!r}] uses chancy, but chancy_plugin_django is not in"
                " INSTALLED_APPS",
                hint="add 'chancy_plugin_django' to INSTALLED_APPS",
                id="chancy.E001",
            )

    @property
    def database(self) -> str:
        """The Django database alias jobs are pushed on (``CHANCY['DATABASE']``)."""
        return str(chancy_settings()["DATABASE"])

    def enqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        """Push the task as a chancy job on Django's connection, in its current transaction."""
        self.validate_task(task)
        now = timezone.now()
        job = Job(
            func=RUN_TASK,
            queue=task.queue_name,
            kwargs={"task": task.module_path, "args": list(args), "kwargs": dict(kwargs)},
            priority=task.priority,
            max_attempts=self.max_attempts,
            scheduled_at=task.run_after or now,
            meta={"django": {"backend": self.alias}},
        )
        (ref,) = push_on_django([job], using=self.database)
        result: TaskResult[Any] = TaskResult(
            task=task,
            id=str(ref),
            status=STATUSES["pending"],
            enqueued_at=now,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        # Sent once the job exists for workers: when the caller's transaction commits (at
        # once outside atomic()); a rolled-back enqueue sends nothing.
        transaction.on_commit(
            partial(task_enqueued.send, type(self), task_result=result), using=self.database
        )
        return result

    def get_result(self, result_id: str) -> TaskResult[Any]:
        """The task's current state, read from chancy's jobs table on Django's connection
        (so a job pushed in the current transaction is found before it commits)."""
        from chancy_plugin_django.models import Job as JobRow

        try:
            job_id = uuid.UUID(str(result_id))
            row = JobRow.objects.using(self.database).get(id=job_id, func=RUN_TASK)
        except (ValueError, JobRow.DoesNotExist):
            raise TaskResultDoesNotExist(
                f"no chancy job {result_id!r} runs a Django task"
            ) from None
        return task_result(row, default_backend=self.alias)


def task_result(
    job: Any,
    *,
    default_backend: str = "default",
    worker_id: str | None = None,
    errors: list[Any] | None = None,
    finished_at: datetime | None = None,
) -> TaskResult[Any]:
    """The Django ``TaskResult`` of a chancy job running a Django task: ``job`` is a row
    of the admin's ``Job`` model or a :class:`~chancy_core.QueuedJob` (the worker's).

    ``worker_id`` (default: the row's ``taken_by``), ``errors`` (default: the job's) and
    ``finished_at`` (default: its ``completed_at``) override what the job says, for the
    worker's signals, which are sent before the job object has them."""
    from django.utils.module_loading import import_string

    found = import_string(job.kwargs["task"])
    if not isinstance(found, Task):
        raise TaskResultDoesNotExist(
            f"job {job.id} names {job.kwargs['task']}, which is no longer a Django task"
        )
    task = found.using(
        priority=job.priority,
        queue_name=job.queue,
        backend=job.meta.get("django", {}).get("backend", default_backend),
        run_after=job.scheduled_at,
    )
    state = getattr(job.state, "value", job.state)  # the row's text or QueuedJob.State
    worker = worker_id or getattr(job, "taken_by", None) or "unknown"
    result: TaskResult[Any] = TaskResult(
        task=task,
        id=str(job.id),
        status=STATUSES[state],
        enqueued_at=_pushed_at(uuid.UUID(str(job.id))),
        started_at=job.started_at,
        finished_at=finished_at or job.completed_at,
        last_attempted_at=job.started_at,
        args=job.kwargs["args"],
        kwargs=job.kwargs["kwargs"],
        backend=task.backend,
        errors=[
            TaskError(
                exception_class_path=_exception_path(error["traceback"]),
                traceback=error["traceback"],
            )
            for error in (job.errors if errors is None else errors)
        ],
        # chancy records no worker per attempt (only the running one, in taken_by):
        # one entry per attempt keeps TaskResult.attempts (its length) right.
        worker_ids=[worker] * job.attempts,
    )
    object.__setattr__(result, "_return_value", return_value(job))
    return result
