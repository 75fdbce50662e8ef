"""The example Django project (examples/django_project) on a fresh PostgreSQL database.

Django is set up once per test session, on a database made for the session: Django's
tables by ``migrate``, chancy's by ``manage.py chancy_migrate``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from chancy_core.testing import dsn_for_database

PROJECT = Path(__file__).resolve().parents[3] / "examples" / "django_project"


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


@contextmanager
def run_worker(
    project_database: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``manage.py chancy_worker`` running in its own process (with ``env`` over this
    process's environment); stopped with SIGTERM, after which it must exit with status 0.
    Its output goes to ``log`` (a pipe nobody reads could fill up and block it)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "chancy_worker"],
            cwd=PROJECT,
            env={**os.environ, "EXAMPLE_DATABASE_URL": project_database, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while "started" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"manage.py chancy_worker did not start:\n{log.read_text()}")
        time.sleep(0.1)
    yield process
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"manage.py chancy_worker did not stop within 60 s:\n{log.read_text()}")
    assert code == 0, f"manage.py chancy_worker exited with {code}:\n{log.read_text()}"


@pytest.fixture(scope="module")
def worker(
    project_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    """The example project's worker (see :func:`run_worker`)."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with run_worker(project_database, log) as process:
        yield process
