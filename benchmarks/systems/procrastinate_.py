"""Procrastinate 3.10.0: ``run_worker_async(concurrency=50)`` over a psycopg pool of 10."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from procrastinate import App, PsycopgConnector

from systems._common import QUEUE, record_probe

REQUIREMENTS = ("procrastinate==3.10.0",)
PYTHON = "python3"

PROGRESS_SQL = (
    "SELECT count(*) FILTER (WHERE status = 'todo'), count(*)"
    " FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
)
SUCCEEDED_SQL = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"

POOL_SIZE = 10


async def noop() -> None:
    """Do nothing."""


async def probe(pushed_at: float) -> None:
    """Record when this job started."""
    record_probe(pushed_at)


def _app(dsn: str) -> App:
    """An app with both tasks registered, not yet opened."""
    app = App(connector=PsycopgConnector(conninfo=dsn, min_size=POOL_SIZE, max_size=POOL_SIZE))
    app.task(name="noop", queue=QUEUE)(noop)
    app.task(name="probe", queue=QUEUE)(probe)
    return app


class ProcrastinateClient:
    """Producer over an open app."""

    def __init__(self, app: App) -> None:
        self._app = app

    async def enqueue_bulk(self, count: int, batch_size: int) -> None:
        """``batch_defer_async`` once per batch."""
        deferrer = self._app.configure_task("noop")
        for start in range(0, count, batch_size):
            await deferrer.batch_defer_async(*({} for _ in range(min(batch_size, count - start))))

    async def push_probe(self, pushed_at: float) -> None:
        """Defer one probe."""
        await self._app.configure_task("probe").defer_async(pushed_at=pushed_at)


async def migrate(dsn: str) -> None:
    """Apply Procrastinate's schema."""
    async with _app(dsn).open_async() as app:
        await app.schema_manager.apply_schema_async()


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[ProcrastinateClient]:
    """Open the app (and its pool) for producing."""
    async with _app(dsn).open_async() as app:
        yield ProcrastinateClient(app)


async def _work(dsn: str) -> None:
    """Open the app and run its worker."""
    async with _app(dsn).open_async() as app:
        await app.run_worker_async(queues=[QUEUE], concurrency=50)


def run_worker(dsn: str) -> None:
    """Run one Procrastinate worker; it stops gracefully on SIGTERM."""
    asyncio.run(_work(dsn))
