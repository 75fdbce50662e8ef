"""The example Django project (examples/django_project) on a fresh PostgreSQL database.

Django is set up once per test session, on a database made for the session: Django's
tables by ``migrate``, chancy's by ``manage.py chancy_migrate``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from django_helpers import PROJECT, run_worker
from psycopg import sql

from chancy_core.testing import dsn_for_database


@pytest.fixture(scope="session")
def project_database(postgres_dsn: str) -> Iterator[str]:
    """The DSN of the example project's database; Django is set up on it."""
    name = f"chancy_django_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = dsn_for_database(postgres_dsn, name)
    url = psycopg.conninfo.make_conninfo(dsn)
    os.environ["EXAMPLE_DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    sys.path.insert(0, str(PROJECT))
    import django
    from django.core.management import call_command
    from django.db import connections

    django.setup()
    call_command("migrate", verbosity=0)
    call_command("chancy_migrate", verbosity=0)
    from chancy_plugin_django.conf import get_app, queues

    # Enqueueing needs declared queues (a push to an undeclared queue fails): declare the
    # settings' queues now, as a deploy does, not only when the worker starts.
    for queue in queues():
        get_app().sync_declare(queue)
    yield url

    get_app().sync_close()
    connections.close_all()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="module")
def worker(
    project_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    """The example project's worker (see :func:`run_worker`)."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with run_worker(project_database, log) as process:
        yield process
