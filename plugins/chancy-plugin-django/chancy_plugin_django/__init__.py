"""Django integration for chancy-core.

* :class:`~chancy_plugin_django.backend.ChancyBackend`: Django's Tasks framework on chancy.
* ``settings.CHANCY``: configuration (:mod:`chancy_plugin_django.conf`).
* ``manage.py chancy_worker`` and ``manage.py chancy_migrate``.
* Read-only admin pages of jobs and queues.
* :func:`push_on_django`: push any chancy job inside the current Django transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from chancy_core import Chancy, IsAJob, Job, Reference

__all__ = ["get_app", "push_on_django"]


def get_app() -> Chancy:
    """This process's :class:`~chancy_core.Chancy`, configured by ``settings.CHANCY``."""
    from chancy_plugin_django.conf import get_app as app

    return app()


def push_on_django(
    jobs: Iterable[Job | IsAJob[..., Any]], *, using: str | None = None
) -> list[Reference]:
    """Push chancy jobs on Django's connection ``using`` (default ``CHANCY['DATABASE']``),
    inside its current transaction: a rollback of the enclosing ``atomic()`` removes them."""
    from django.db import connections

    from chancy_plugin_django.conf import chancy_settings
    from chancy_plugin_django.conf import get_app as app

    connection = connections[using or chancy_settings()["DATABASE"]]
    connection.ensure_connection()
    # A plain psycopg cursor on Django's connection (same transaction): Django's default
    # cursors inline parameters into the SQL text; this one sends chancy's arrays as
    # parameters, as chancy's own connections do.
    with psycopg.Cursor(connection.connection) as cursor:
        return app().sync_push_many_ex(cursor, jobs)
