"""Django's Tasks framework under one name: ``django.tasks`` (Django 6.0+) or its backport.

Django 6.0 needs Python 3.12+. On Python 3.11 the newest Django is 5.2 and the
framework comes from the ``django-tasks`` backport (module ``django_tasks``),
which ``django.tasks`` was merged from: the same classes, two exception names
differ. Everything in this plugin imports them from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import django

__all__ = [
    "DEFAULT_TASK_QUEUE_NAME",
    "BaseTaskBackend",
    "InvalidTask",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "normalize_json",
    "task",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]

# The type checker reads the (typed) backport; at run time Django's own wins when present.
if TYPE_CHECKING or django.VERSION < (6, 0):
    from django_tasks import DEFAULT_TASK_QUEUE_NAME, task, task_backends
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json
else:
    from django.tasks import DEFAULT_TASK_QUEUE_NAME, task, task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
