"""Read-only, unmanaged models over chancy's own tables (for the admin and the backend).

Django never creates, alters or deletes these tables: chancy's migrations own them
(``manage.py chancy_migrate``). The table names follow ``CHANCY['PREFIX']``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.fields import ArrayField
from django.db import models

from chancy_plugin_django.conf import chancy_settings

__all__ = ["Job", "Queue"]

_PREFIX: str = chancy_settings()["PREFIX"]


class Job(models.Model):
    """One row of chancy's jobs table."""

    id = models.UUIDField(primary_key=True)
    queue = models.TextField()
    func = models.TextField()
    kwargs = models.JSONField(null=True)
    meta = models.JSONField(default=dict)
    priority = models.IntegerField()
    max_attempts = models.IntegerField()
    attempts = models.IntegerField()
    state = models.TextField()
    scheduled_at = models.DateTimeField()
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True)
    completed_at = models.DateTimeField(null=True)
    limits = models.JSONField(default=list)
    unique_key = models.TextField(null=True)
    errors = models.JSONField(default=list)
    taken_by = models.TextField(null=True)
    cancelled_at = models.DateTimeField(null=True)

    class Meta:
        managed = False
        db_table = f"{_PREFIX}jobs"
        ordering = ("-created_at",)
        verbose_name = "chancy job"

    def __str__(self) -> str:
        return f"{self.func} ({self.state}, {self.id})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Refused: chancy writes its own rows (push jobs with chancy or a task backend)."""
        raise TypeError("chancy jobs are read-only in Django; push them with chancy")

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        """Refused: cancel jobs with ``Chancy.cancel_job``; the pruner plugin removes old ones."""
        raise TypeError("chancy jobs are read-only in Django; cancel them with chancy")


class Queue(models.Model):
    """One row of chancy's queues table."""

    name = models.TextField(primary_key=True)
    concurrency = models.IntegerField()
    executor = models.TextField()
    executor_options = models.JSONField(default=dict)
    polling_interval = models.FloatField()
    rate_limit = models.IntegerField(null=True)
    rate_limit_window = models.IntegerField(null=True)
    tags = ArrayField(models.TextField())
    state = models.TextField()
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = f"{_PREFIX}queues"
        ordering = ("name",)
        verbose_name = "chancy queue"

    def __str__(self) -> str:
        return str(self.name)

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Refused: declare queues with chancy (``CHANCY['QUEUES']`` or ``Chancy.declare``)."""
        raise TypeError("chancy queues are read-only in Django; declare them with chancy")

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        """Refused: delete queues with ``Chancy.delete_queue``."""
        raise TypeError("chancy queues are read-only in Django; delete them with chancy")
