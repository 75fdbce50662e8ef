"""What a chancy worker runs for a Django task.

Every job the backend pushes names :func:`run_task`, which imports the task and
calls it. It runs only Django ``@task`` objects: a row naming anything else fails
without calling it, whatever the worker's allow-list says about its module.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections
from django.utils.module_loading import import_string

from chancy_core import QueuedJob, job
from chancy_plugin_django.compat import (
    InvalidTask,
    Task,
    TaskContext,
    TaskResultStatus,
    normalize_json,
)

__all__ = ["run_task"]


@job()
def run_task(task: str, args: list[Any], kwargs: dict[str, Any], job_context: QueuedJob) -> Any:
    """Run the Django task named ``task`` with ``args`` and ``kwargs``; return its JSON result.

    Database connections are handled as around a request: stale ones are closed
    before and after the task.
    """
    if not apps.ready:
        raise ImproperlyConfigured(
            "Django is not set up in this process: run the worker with `manage.py"
            " chancy_worker`, which sets CHANCY_PROCESS_INITIALIZER=django.setup for the"
            " process executor's children"
        )
    found = import_string(task)
    if not isinstance(found, Task):
        raise InvalidTask(f"{task} is not a Django task (decorate it with @task); not run")
    close_old_connections()
    try:
        if found.takes_context:
            from chancy_plugin_django.backend import ChancyBackend

            backend = found.get_backend()
            if not isinstance(backend, ChancyBackend):
                raise InvalidTask(f"{task} uses backend {found.backend!r}, not chancy's")
            result = backend.get_result(job_context.id)
            object.__setattr__(result, "status", TaskResultStatus.RUNNING)
            value = found.call(TaskContext(task_result=result), *args, **kwargs)
        else:
            value = found.call(*args, **kwargs)
        return normalize_json(value)
    finally:
        close_old_connections()
