"""Migrations: versioned per component, applied once even when raced, isolated per prefix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import psycopg
import pytest
from psycopg import sql

from chancy_core import Chancy, Job, Queue, hookimpl
from chancy_core.errors import MigrationError, SchemaMissingError
from chancy_core.migrations import Migration, MigrationSet, apply, load_migrations
from chancy_core.testing import dsn_for_database


@pytest.fixture
def empty_database(postgres_dsn: str) -> Iterator[str]:
    """A DSN of a fresh database with no chancy tables at all."""
    name = f"chancy_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield dsn_for_database(postgres_dsn, name)
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def ledger(dsn: str, prefix: str = "chancy_") -> list[tuple[str, int, str]]:
    with psycopg.connect(dsn) as conn:
        query = sql.SQL("SELECT component, version, name FROM {} ORDER BY 1, 2").format(
            sql.Identifier(f"{prefix}migrations")
        )
        return [tuple(row) for row in conn.execute(query).fetchall()]  # type: ignore[misc]


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


CORE = [
    f"core:{m.version:04d}_{m.name}"
    for m in load_migrations("core", "chancy_core.migrations.core").migrations
]


@pytest.mark.db
@pytest.mark.anyio
async def test_migrate_applies_each_core_step_once_then_does_nothing(empty_database):
    async with Chancy(empty_database) as app:
        assert await app.migrate() == CORE
        assert await app.migrate() == []
        assert await app.migrate() == []
    assert [f"{c}:{v:04d}_{n}" for c, v, n in ledger(empty_database)] == CORE
    assert {"chancy_jobs", "chancy_queues", "chancy_migrations"} <= tables(empty_database)


@pytest.mark.db
@pytest.mark.anyio
async def test_migrate_on_the_migrated_test_database_is_a_no_op(chancy, database):
    before = ledger(database)
    assert await chancy.migrate() == []
    assert ledger(database) == before


@pytest.mark.db
@pytest.mark.anyio
async def test_four_concurrent_migrations_apply_each_step_exactly_once(empty_database):
    applied: list[str] = []

    async def migrate() -> None:
        async with Chancy(empty_database) as app:
            applied.extend(await app.migrate())

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(migrate)
    assert sorted(applied) == sorted(CORE)
    assert len(ledger(empty_database)) == len(CORE)


@pytest.mark.db
@pytest.mark.anyio
async def test_two_prefixes_in_one_database_do_not_collide(database):
    async with Chancy(database) as one, Chancy(database, prefix="other_") as other:
        assert await other.migrate() == CORE
        ref = await one.push(Job(func="m.f", unique_key="shared-key"))
        await one.declare(Queue("only-in-one"))
        assert await other.get_job(ref) is None
        assert await other.get_all_queues() == []
        other_ref = await other.push(Job(func="m.f", unique_key="shared-key"))
        assert other_ref != ref  # the unique key is per prefix too
        assert await one.get_job(other_ref) is None
    assert {"other_jobs", "other_queues", "other_migrations"} <= tables(database)


@pytest.mark.db
@pytest.mark.anyio
async def test_unmigrated_database_raises_schema_missing_error_saying_to_migrate(empty_database):
    async with Chancy(empty_database) as app:
        for call in (
            lambda: app.push(Job(func="m.f")),
            lambda: app.get_job(str(uuid.uuid4())),
            lambda: app.declare(Queue("q")),
            lambda: app.get_all_queues(),
            lambda: app.cancel_job(str(uuid.uuid4())),
            lambda: app.wait_for_job(str(uuid.uuid4()), timeout=1),
        ):
            with pytest.raises(SchemaMissingError, match=r"chancy\.migrate\(\)"):
                await call()
        # A plugin's own statements on app.connection() are translated the same way.
        with pytest.raises(SchemaMissingError, match=r"chancy\.migrate\(\)"):
            async with app.connection() as conn:
                await conn.execute(app.schema.render("SELECT count(*) FROM {jobs}"))


@pytest.mark.db
def test_unmigrated_prefix_raises_schema_missing_error_from_the_sync_api(database):
    with Chancy(database, prefix="nothere_") as app:
        with pytest.raises(SchemaMissingError, match="'nothere_'"):
            app.sync_push(Job(func="m.f"))
        with pytest.raises(SchemaMissingError):
            app.sync_get_job(str(uuid.uuid4()))


class BrokenMigration:
    name = "broken"

    @hookimpl
    def chancy_migrations(self) -> MigrationSet:
        return MigrationSet(
            "broken",
            (
                Migration(1, "ok", "CREATE TABLE {broken_first} (id int)"),
                Migration(2, "bad", "CREATE TABLE {broken_second} (id int); SELECT nonsense"),
            ),
        )


@pytest.mark.db
@pytest.mark.anyio
async def test_failed_migration_raises_migration_error_and_keeps_none_of_that_step(database):
    async with Chancy(database, plugins=[BrokenMigration()]) as app:
        with pytest.raises(MigrationError, match="broken:0002_bad failed and was rolled back"):
            await app.migrate()
    assert ("broken", 1, "ok") in ledger(database)
    assert ("broken", 2, "bad") not in ledger(database)
    assert "chancy_broken_first" in tables(database)
    assert "chancy_broken_second" not in tables(database)


def test_migration_files_with_a_gap_in_their_numbers_are_refused(tmp_path: Path, monkeypatch):
    package = tmp_path / f"gappy_{uuid.uuid4().hex[:8]}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "0001_first.sql").write_text("SELECT 1")
    (package / "0003_third.sql").write_text("SELECT 1")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MigrationError, match=r"numbered 0001, 0002, \.\.\. without gaps"):
        load_migrations("gappy", package.name)


@pytest.mark.db
@pytest.mark.anyio
async def test_the_0006_index_built_beforehand_concurrently_is_kept(empty_database):
    """docs/concurrency.md: the index of migration 0006 may be built first with CREATE INDEX
    CONCURRENTLY (writes go on); the migration then finds it and builds nothing."""
    core = load_migrations("core", "chancy_core.migrations.core")
    async with Chancy(empty_database) as app:
        async with await psycopg.AsyncConnection.connect(empty_database) as conn:
            await apply(conn, app.schema, [MigrationSet("core", core.migrations[:5])])
        doc = (Path(__file__).parent.parent / "docs" / "concurrency.md").read_text()
        statement = doc.split("```sql\n", 1)[1].split("```", 1)[0]
        statement = statement.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1)
        with psycopg.connect(empty_database, autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[call-overload]
            built = conn.execute(
                "SELECT indexrelid FROM pg_index WHERE indexrelid = 'chancy_jobs_key_fetch_idx'"
                "::regclass AND indisvalid"
            ).fetchone()
        assert built is not None
        assert await app.migrate() == [CORE[5]]
    with psycopg.connect(empty_database) as conn:
        rows = conn.execute(
            "SELECT indexrelid, pg_get_indexdef(indexrelid) FROM pg_index"
            " WHERE indrelid = 'chancy_jobs'::regclass"
            " AND pg_get_indexdef(indexrelid) LIKE '%concurrency_key%priority%'"
        ).fetchall()
    assert [row[0] for row in rows] == [built[0]], rows
    assert "WHERE ((meta ? 'concurrency_key'::text)" in rows[0][1]
