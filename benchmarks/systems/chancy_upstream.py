"""Upstream Chancy 0.26.0: async executor, concurrency 100, polling_interval 1, eager polling."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from chancy import Chancy, Job, Queue, Worker

from systems._common import QUEUE, record_probe

REQUIREMENTS = ("chancy[cron]==0.26.0",)
PYTHON = "python3"

PROGRESS_SQL = (
    "SELECT count(*) FILTER (WHERE state = 'pending'), count(*)"
    " FROM chancy_jobs WHERE state IN ('pending', 'running', 'retrying')"
)
SUCCEEDED_SQL = "SELECT count(*) FROM chancy_jobs WHERE state = 'succeeded'"

BENCH_QUEUE = Queue(
    QUEUE,
    executor=Chancy.Executor.Async,
    concurrency=100,
    polling_interval=1,
    eager_polling=True,
)


async def noop() -> None:
    """Do nothing."""


async def probe(pushed_at: float) -> None:
    """Record when this job started."""
    record_probe(pushed_at)


def _chancy(dsn: str) -> Chancy:
    """An application whose library logging is at WARNING."""
    log = logging.getLogger("chancy")
    log.setLevel(logging.WARNING)
    return Chancy(dsn, log=log)


class ChancyClient:
    """Producer over an open application."""

    def __init__(self, chancy: Chancy) -> None:
        self._chancy = chancy

    async def enqueue_bulk(self, count: int, batch_size: int) -> None:
        """``push_many(jobs, batch_size=...)``: one transaction per batch, one INSERT per job."""
        job = Job.from_func(noop, queue=QUEUE)
        async for _ in self._chancy.push_many([job] * count, batch_size=batch_size):
            pass

    async def push_probe(self, pushed_at: float) -> None:
        """Push one probe."""
        await self._chancy.push(Job.from_func(probe, queue=QUEUE, kwargs={"pushed_at": pushed_at}))


async def migrate(dsn: str) -> None:
    """Run Chancy's migrations and declare the benchmark queue."""
    async with _chancy(dsn) as chancy:
        await chancy.migrate()
        await chancy.declare(BENCH_QUEUE, upsert=True)


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[ChancyClient]:
    """Open the application (and its pool) for producing."""
    async with _chancy(dsn) as chancy:
        yield ChancyClient(chancy)


async def _work(dsn: str) -> None:
    """Run a worker until its signal handlers stop it."""
    async with _chancy(dsn) as chancy, Worker(chancy) as worker:
        await worker.wait_for_shutdown()


def run_worker(dsn: str) -> None:
    """Run one Chancy worker with the default plugins; it stops gracefully on SIGTERM."""
    asyncio.run(_work(dsn))
