"""A Django app whose receivers append each task signal, as one JSON line, to the file
named by ``SIGNAL_LOG``: what the receiver saw, and the job's state in the database then."""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

from chancy_plugin_django.compat import task_enqueued, task_finished, task_started
from django.apps import AppConfig

_lock = threading.Lock()


def record(name: str, sender: type, task_result: Any, **kwargs: Any) -> None:
    """Append what a receiver of ``name`` sees to ``SIGNAL_LOG``."""
    from chancy_plugin_django.models import Job

    row = Job.objects.filter(id=task_result.id).values_list("state", flat=True).first()
    exc = sys.exc_info()[0]
    line = {
        "signal": name,
        "sender": sender.__name__,
        "id": task_result.id,
        "status": str(task_result.status),
        "db_state": row,
        "attempts": task_result.attempts,
        "worker_ids": task_result.worker_ids,
        "started": task_result.started_at is not None,
        "finished": task_result.finished_at is not None,
        "errors": [e.exception_class_path for e in task_result.errors],
        "return_value": (
            task_result.return_value if str(task_result.status) == "SUCCESSFUL" else None
        ),
        "exc_info": exc.__name__ if exc else None,
        "pid": os.getpid(),
    }
    with _lock, open(os.environ["SIGNAL_LOG"], "a") as out:
        out.write(json.dumps(line) + "\n")


def on_started(sender: type, task_result: Any, **kwargs: Any) -> None:
    record("task_started", sender, task_result)


def on_finished(sender: type, task_result: Any, **kwargs: Any) -> None:
    record("task_finished", sender, task_result)


def on_enqueued(sender: type, task_result: Any, **kwargs: Any) -> None:
    record("task_enqueued", sender, task_result)


class RecorderConfig(AppConfig):  # type: ignore[misc]  # Django is untyped here
    """Connects the three receivers."""

    name = "django_signal_recorder"
    label = "django_signal_recorder"
    path = os.path.dirname(os.path.abspath(__file__))

    def ready(self) -> None:
        task_enqueued.connect(on_enqueued, dispatch_uid="recorder_enqueued")
        task_started.connect(on_started, dispatch_uid="recorder_started")
        task_finished.connect(on_finished, dispatch_uid="recorder_finished")
