"""OUR system, chancy-core: ``push_many`` for bulk, one ``Worker`` process per worker.

The ``bench`` queue runs the async executor with 500 slots: no-op jobs are claimed in
batches sized to free slots and their outcomes written in batches of up to 200.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from chancy_core import Chancy, Job, Queue, Worker

from systems._common import record_probe

# The repository root, installed editable so every run measures the working tree.
REQUIREMENTS = ("--editable", "{repo}")
PYTHON = "python3"

# Only unfinished rows are counted (as for the peers): the fetch and running indexes serve it.
PROGRESS_SQL = (
    "SELECT count(*) FILTER (WHERE state = 'pending'), count(*)"
    " FROM chancy_jobs WHERE state IN ('pending', 'running', 'retrying')"
)
SUCCEEDED_SQL = "SELECT count(*) FROM chancy_jobs WHERE state = 'succeeded'"

QUEUE = Queue("bench", concurrency=500, executor="async", polling_interval=1.0)


async def noop() -> None:
    """The no-op job body every processed job runs."""


async def probe(pushed_at: float) -> None:
    """The latency probe's body: record when it started."""
    record_probe(pushed_at)


NOOP = Job.from_func(noop, queue="bench")


def _app(dsn: str) -> Chancy:
    return Chancy(dsn, autoload_plugins=False)


async def migrate(dsn: str) -> None:
    """Apply chancy-core's migrations and declare ``bench``."""
    async with _app(dsn) as app:
        await app.migrate()
        await app.declare(QUEUE)


class ChancyCoreClient:
    """Producer over the app's pool."""

    def __init__(self, app: Chancy) -> None:
        self._app = app

    async def enqueue_bulk(self, count: int, batch_size: int) -> None:
        """``push_many`` in calls of ``batch_size`` jobs (one INSERT statement each)."""
        for start in range(0, count, batch_size):
            size = min(batch_size, count - start)
            await self._app.push_many([NOOP] * size, batch_size=batch_size)

    async def push_probe(self, pushed_at: float) -> None:
        """Push one probe job."""
        await self._app.push(Job.from_func(probe, queue="bench", kwargs={"pushed_at": pushed_at}))


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[ChancyCoreClient]:
    """Open the app (its pool) for producing."""
    async with _app(dsn) as app:
        yield ChancyCoreClient(app)


async def _work(dsn: str) -> None:
    async with _app(dsn) as app:
        await Worker(app, shutdown_timeout=5.0).serve()


def run_worker(dsn: str) -> None:
    """Run one worker on ``bench`` until SIGTERM."""
    logging.getLogger("chancy_core").setLevel(logging.WARNING)
    anyio.run(_work, dsn)
