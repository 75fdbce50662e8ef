"""What a pruning round deletes, and what it never touches."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, LiteralString

import anyio
import pytest
from chancy_plugin_pruner import DEFAULT_RETENTION, KEY, Pruner

from chancy_core import Chancy, Job, QueuedJob, Worker
from chancy_core.errors import ConfigurationError

STATES = [s.value for s in QueuedJob.State]


def _op(app: Chancy, template: LiteralString, params: dict[str, Any]) -> Any:
    rows = yield app.schema.render(template), params
    return rows


@pytest.fixture
async def app(database: str) -> AsyncIterator[Chancy]:
    async with Chancy(database, autoload_plugins=False, plugins=[Pruner()]) as chancy:
        await chancy.migrate()
        yield chancy


async def jobs_in(app: Chancy, state: str, age: timedelta, count: int = 1) -> list[str]:
    """Push ``count`` jobs and age them: every timestamp ``age`` ago, in ``state``."""
    refs = await app.push_many([Job(func="a.b") for _ in range(count)])
    await app.execute(
        _op(
            app,
            """
            UPDATE {jobs} SET state = %(state)s,
                created_at = now() - %(age)s::interval, scheduled_at = now() - %(age)s::interval,
                started_at = now() - %(age)s::interval, completed_at = now() - %(age)s::interval
            WHERE id = ANY(%(ids)s::uuid[])
            """,
            {"state": state, "age": age, "ids": [r.identifier for r in refs]},
        )
    )
    return [r.identifier for r in refs]


async def remaining(app: Chancy) -> dict[str, int]:
    rows = await app.execute(
        _op(app, "SELECT state, count(*) FROM {jobs} GROUP BY state ORDER BY state", {})
    )
    return {state: n for state, n in rows}


@pytest.mark.anyio
@pytest.mark.db
async def test_old_finished_jobs_go_and_nothing_else_does(app: Chancy) -> None:
    year = timedelta(days=365)
    for state in STATES:  # every state, with timestamps older than any retention
        await jobs_in(app, state, year, 2)
    await jobs_in(app, "succeeded", timedelta(hours=12), 3)  # younger than its retention
    await jobs_in(app, "failed", timedelta(days=3), 4)  # older than succeeded's, not failed's
    await jobs_in(app, "failed", timedelta(days=8), 1)

    deleted = await Pruner().prune(app)

    assert deleted == {"succeeded": 2, "failed": 3}
    assert await remaining(app) == {
        "pending": 2,
        "running": 2,
        "retrying": 2,
        "succeeded": 3,
        "failed": 4,
    }
    assert await Pruner().prune(app) == {"succeeded": 0, "failed": 0}


@pytest.mark.anyio
@pytest.mark.db
async def test_each_state_has_its_own_retention_and_none_keeps(app: Chancy) -> None:
    await jobs_in(app, "succeeded", timedelta(minutes=10), 2)
    await jobs_in(app, "failed", timedelta(days=30), 2)
    retention: dict[Any, float | None] = {"succeeded": 60, QueuedJob.State.FAILED: None}
    pruner = Pruner(retention=retention)
    assert await pruner.prune(app) == {"succeeded": 2}
    assert await remaining(app) == {"failed": 2}


@pytest.mark.anyio
@pytest.mark.db
async def test_a_round_deletes_in_bounded_batches(app: Chancy) -> None:
    await jobs_in(app, "succeeded", timedelta(days=2), 10)
    pruner = Pruner(retention={"succeeded": timedelta(days=1)}, batch_size=3, max_batches=2)
    assert await pruner.prune(app) == {"succeeded": 6}  # two statements of three
    assert await pruner.prune(app) == {"succeeded": 4}  # 3, then 1: a short batch ends it
    assert await remaining(app) == {}


@pytest.mark.anyio
@pytest.mark.db
async def test_the_index_migration_is_applied(app: Chancy) -> None:
    rows = await app.execute(
        _op(
            app,
            "SELECT indexdef FROM pg_indexes WHERE indexname = %(name)s",
            {"name": app.schema.name("pruner_jobs_completed_idx")},
        )
    )
    [(definition,)] = rows
    assert "(state, completed_at)" in definition and "succeeded" in definition


@pytest.mark.anyio
@pytest.mark.db
async def test_the_leader_prunes_in_the_background(database: str) -> None:
    registered: list[tuple[str, bool]] = []
    pruner = Pruner(retention={"succeeded": 0, "failed": 0}, interval=0.05)

    def register(name: str, func: object, *, leader_only: bool = False) -> None:
        registered.append((name, leader_only))

    pruner.chancy_worker_tasks(register)
    assert registered == [("pruner", True)]

    with anyio.fail_after(5):
        async with Chancy(database, autoload_plugins=False, plugins=[pruner]) as app:
            await app.migrate()
            await jobs_in(app, "succeeded", timedelta(seconds=1), 3)
            await jobs_in(app, "pending", timedelta(days=9), 1)
            async with Worker(app, heartbeat_interval=0.5, shutdown_timeout=1) as worker:
                assert worker.is_leader
                while (await remaining(app)).get("succeeded"):
                    await anyio.sleep(0.05)
            assert await remaining(app) == {"pending": 1}


def test_installed_plugin_is_discovered_with_its_defaults() -> None:
    found = Chancy("postgresql://localhost/unused").plugins.get_plugin(KEY)
    assert isinstance(found, Pruner) and found.retention == DEFAULT_RETENTION
    assert [m.component for m in Chancy("postgresql://localhost/unused").migration_sets()].count(
        KEY
    ) == 1


@pytest.mark.parametrize(
    "options",
    [
        {"retention": {"pending": timedelta(days=1)}},
        {"retention": {"running": 1}},
        {"retention": {"retrying": None}},
        {"retention": {"failed": -1}},
        {"retention": {"failed": "a week"}},
        {"retention": [("failed", 1)]},
        {"interval": 0},
        {"batch_size": 0},
        {"max_batches": 1.5},
    ],
)
def test_invalid_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Pruner(**options)
