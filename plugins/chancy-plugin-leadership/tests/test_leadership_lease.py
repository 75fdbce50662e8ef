"""The lease statement on its own: who can take it, renew it and release it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from chancy_plugin_leadership import KEY, Leadership

from chancy_core import Chancy, Worker
from chancy_core.errors import ConfigurationError


@pytest.fixture
async def app(database: str) -> AsyncIterator[Chancy]:
    async with Chancy(database, autoload_plugins=False, plugins=[Leadership()]) as chancy:
        await chancy.migrate()
        yield chancy


async def expire(app: Chancy) -> None:
    async with app.pool.connection() as conn:
        await conn.execute(
            app.schema.render("UPDATE {leadership} SET expires_at = now() - interval '1 ms'")
        )


@pytest.mark.anyio
@pytest.mark.db
async def test_only_the_holder_renews_until_the_lease_expires(app: Chancy) -> None:
    lease = Leadership(ttl=60)
    assert await lease.current(app) is None
    assert await lease.acquire(app, "a")
    assert not await lease.acquire(app, "b")
    assert await lease.acquire(app, "a")  # renewal
    first = await lease.current(app)
    assert first is not None and first.holder == "a" and first.valid

    await expire(app)
    assert await lease.acquire(app, "b")  # takeover once expired
    assert not await lease.acquire(app, "a")
    second = await lease.current(app)
    assert second is not None and second.holder == "b" and second.acquired_at > first.acquired_at


@pytest.mark.anyio
@pytest.mark.db
async def test_a_released_lease_is_free_at_once_and_only_the_holder_releases(app: Chancy) -> None:
    lease = Leadership(ttl=60)
    assert await lease.acquire(app, "a")
    assert not await lease.release(app, "b")
    assert not await lease.acquire(app, "b")
    assert await lease.release(app, "a")
    assert not await lease.release(app, "a")
    assert await lease.acquire(app, "b")


@pytest.mark.anyio
@pytest.mark.db
async def test_elections_are_independent(app: Chancy) -> None:
    assert await Leadership(election="one").acquire(app, "a")
    assert await Leadership(election="two").acquire(app, "b")
    assert not await Leadership(election="two").acquire(app, "a")


@pytest.mark.anyio
@pytest.mark.db
async def test_the_lease_expires_on_the_database_clock(app: Chancy) -> None:
    lease = Leadership(ttl=3, interval=1)
    assert await lease.acquire(app, "a")
    current = await lease.current(app)
    assert current is not None
    seconds = (current.expires_at - current.acquired_at).total_seconds()
    assert seconds == pytest.approx(3, abs=0.01)


def test_installed_plugin_is_discovered_and_elects() -> None:
    app = Chancy("postgresql://localhost/unused")
    found = app.plugins.get_plugin(KEY)
    assert isinstance(found, Leadership)
    assert found.ttl == 30 and found.interval == 10 and found.margin == 3
    assert app.plugins.hook.chancy_elects_leader(worker=None) is True
    assert [m.component for m in app.migration_sets()].count(KEY) == 1


@pytest.mark.parametrize(
    "options",
    [
        {"ttl": 0},
        {"ttl": 10, "interval": 9, "margin": 1},
        {"ttl": 10, "interval": -1},
        {"margin": True},
        {"election": ""},
    ],
)
def test_invalid_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Leadership(**options)


@pytest.mark.anyio
@pytest.mark.db
async def test_without_its_table_no_worker_leads_and_the_error_says_what_to_do(
    app: Chancy, caplog: pytest.LogCaptureFixture
) -> None:
    async with app.pool.connection() as conn:
        await conn.execute(app.schema.render("DROP TABLE {leadership}"))
    plugin = Leadership(ttl=1, interval=0.1)
    with anyio.fail_after(5):
        async with (
            Chancy(app.dsn, autoload_plugins=False, plugins=[plugin]) as other,
            Worker(other, heartbeat_interval=0.5, shutdown_timeout=1) as worker,
        ):
            await anyio.sleep(0.3)
            assert not worker.is_leader
    assert "run `await chancy.migrate()`" in caplog.text
