"""Django tasks; the chancy backend runs them on chancy's workers."""

from __future__ import annotations

from chancy_plugin_django.compat import TaskContext, task  # django.tasks on Django 6+

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


@task(takes_context=True)
def remember_attempt(context: TaskContext, label: str) -> None:
    """Records which attempt of which task result ran (a task that takes its context)."""
    Note.objects.create(text=f"{label}: attempt {context.attempt} of {context.task_result.id}")


@task()
async def note_async(text: str) -> None:
    """An async task: Django runs it with async_to_sync in the worker's child process."""
    await Note.objects.acreate(text=text)
