"""Django tasks; the chancy backend runs them on chancy's workers."""

from __future__ import annotations

from chancy_plugin_django.compat import task  # `from django.tasks import task` on Django 6+

from notes.models import Note  # the ORM at import time: the worker's children ran django.setup()


@task()
def process_note(note_id: int) -> int:
    """Count the note's words and store the count."""
    note = Note.objects.get(id=note_id)
    note.words = len(note.text.split())
    note.save(update_fields=["words"])
    return note.words


@task()
def reject(reason: str) -> None:
    """Always fails (to show a failed task's result)."""
    raise ValueError(reason)
