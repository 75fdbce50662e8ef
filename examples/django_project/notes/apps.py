"""The notes app of the example project."""

from __future__ import annotations

from django.apps import AppConfig


class NotesConfig(AppConfig):
    """Notes, and the task that processes them."""

    name = "notes"
