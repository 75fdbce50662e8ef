"""Read-only admin pages of chancy's jobs and queues (view permission only)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from chancy_plugin_django.models import Job, Queue

__all__ = ["JobAdmin", "QueueAdmin", "ReadOnlyAdmin"]


class ReadOnlyAdmin(admin.ModelAdmin):
    """A model admin that can list and show rows, never add, change or delete them."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Never: chancy writes these rows."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Never: the change page shows the row read-only."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Never: cancel or prune with chancy."""
        return False


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    """Jobs: newest first, filterable by state and queue, searchable by function and id."""

    list_display = ("id", "func", "queue", "state", "attempts", "created_at", "completed_at")
    list_filter = ("state", "queue")
    search_fields = ("func", "=id", "=unique_key")
    show_full_result_count = False  # no count(*) over a large jobs table on every page


@admin.register(Queue)
class QueueAdmin(ReadOnlyAdmin):
    """Queues: executor, concurrency and state."""

    list_display = ("name", "state", "executor", "concurrency", "polling_interval", "updated_at")
