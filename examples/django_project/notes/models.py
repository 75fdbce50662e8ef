"""A note, processed in the background after it is saved."""

from __future__ import annotations

from django.db import models


class Note(models.Model):
    """A piece of text; ``words`` is filled in by the ``process_note`` task."""

    text = models.TextField()
    words = models.IntegerField(null=True)

    def __str__(self) -> str:
        return self.text[:40]
