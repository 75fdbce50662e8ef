"""Procrastinate 3.10.0: ``run_worker_async(concurrency=...)`` over a psycopg pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from procrastinate import App, PsycopgConnector

from systems._common import QUEUE, Config, record_probe

REQUIREMENTS = ("procrastinate==3.10.0",)
PYTHON = "python3"
SETTINGS = {"concurrency": 100, "pool_size": 10}
SWEEP = (
    {"concurrency": 10},
    {"concurrency": 50},
    {"concurrency": 100},
    {"concurrency": 100, "pool_size": 20},
    {"concurrency": 200, "pool_size": 20},
)
# Until a sweep is recorded: METHOD.md's configuration.
BEST = {"concurrency": 50}

PROGRESS_SQL = (
    "SELECT count(*) FILTER (WHERE status = 'todo'), count(*)"
    " FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
)
SUCCEEDED_SQL = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"


async def noop(i: int) -> None:
    """Do nothing."""


async def probe(pushed_at: float) -> None:
    """Record when this job started."""
    record_probe(pushed_at)


def _app(dsn: str, pool_size: int = 10) -> App:
    """An app with both tasks registered, not yet opened."""
    app = App(connector=PsycopgConnector(conninfo=dsn, min_size=pool_size, max_size=pool_size))
    app.task(name="noop", queue=QUEUE)(noop)
    app.task(name="probe", queue=QUEUE)(probe)
    return app


class ProcrastinateClient:
    """Producer over an open app."""

    def __init__(self, app: App) -> None:
        self._app = app

    async def enqueue_bulk(self, count: int, batch_size: int) -> None:
        """``batch_defer_async`` once per batch, each job with its own ``i``."""
        deferrer = self._app.configure_task("noop")
        for start in range(0, count, batch_size):
            await deferrer.batch_defer_async(
                *({"i": i} for i in range(start, min(start + batch_size, count)))
            )

    async def push_one(self, i: int) -> None:
        """``defer_async`` one job."""
        await self._app.configure_task("noop").defer_async(i=i)

    async def push_probe(self, pushed_at: float) -> None:
        """Defer one probe."""
        await self._app.configure_task("probe").defer_async(pushed_at=pushed_at)


async def migrate(dsn: str, config: Config) -> None:
    """Apply Procrastinate's schema."""
    async with _app(dsn).open_async() as app:
        await app.schema_manager.apply_schema_async()


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[ProcrastinateClient]:
    """Open the app (and its pool) for producing."""
    async with _app(dsn).open_async() as app:
        yield ProcrastinateClient(app)


async def _work(dsn: str, config: Config) -> None:
    """Open the app and run its worker."""
    async with _app(dsn, config["pool_size"]).open_async() as app:
        await app.run_worker_async(queues=[QUEUE], concurrency=config["concurrency"])


def run_worker(dsn: str, config: Config) -> None:
    """Run one Procrastinate worker; it stops gracefully on SIGTERM."""
    asyncio.run(_work(dsn, config))
