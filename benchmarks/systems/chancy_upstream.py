"""Upstream Chancy 0.26.0: async executor, polling_interval 1, eager polling, default plugins.

Its default plugins stay on, as a user gets them (ours runs with its deployed plugins too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from chancy import Chancy, Job, Queue, Worker

from systems._common import QUEUE, Config, record_probe

REQUIREMENTS = ("chancy[cron]==0.26.0",)
PYTHON = "python3"
SETTINGS = {"concurrency": 100}
SWEEP = ({"concurrency": 50}, {"concurrency": 100}, {"concurrency": 200}, {"concurrency": 500})
# Until a sweep is recorded: METHOD.md's configuration.
BEST = {"concurrency": 100}

PROGRESS_SQL = (
    "SELECT count(*) FILTER (WHERE state = 'pending'), count(*)"
    " FROM chancy_jobs WHERE state IN ('pending', 'running', 'retrying')"
)
SUCCEEDED_SQL = "SELECT count(*) FROM chancy_jobs WHERE state = 'succeeded'"


def _queue(config: Config) -> Queue:
    return Queue(
        QUEUE,
        executor=Chancy.Executor.Async,
        concurrency=config["concurrency"],
        polling_interval=1,
        eager_polling=True,
    )


async def noop(i: int) -> None:
    """Do nothing."""


async def probe(pushed_at: float) -> None:
    """Record when this job started."""
    record_probe(pushed_at)


NOOP = Job.from_func(noop, queue=QUEUE)
PROBE = Job.from_func(probe, queue=QUEUE)


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
        """``push_many(jobs, batch_size=...)`` per batch: one transaction, one INSERT per job."""
        for start in range(0, count, batch_size):
            jobs = [NOOP.with_kwargs(i=i) for i in range(start, min(start + batch_size, count))]
            async for _ in self._chancy.push_many(jobs, batch_size=batch_size):
                pass

    async def push_one(self, i: int) -> None:
        """``push`` one job."""
        await self._chancy.push(NOOP.with_kwargs(i=i))

    async def push_probe(self, pushed_at: float) -> None:
        """Push one probe."""
        await self._chancy.push(PROBE.with_kwargs(pushed_at=pushed_at))


async def migrate(dsn: str, config: Config) -> None:
    """Run Chancy's migrations and declare the benchmark queue."""
    async with _chancy(dsn) as chancy:
        await chancy.migrate()
        await chancy.declare(_queue(config), upsert=True)


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[ChancyClient]:
    """Open the application (and its pool) for producing."""
    async with _chancy(dsn) as chancy:
        yield ChancyClient(chancy)


async def _work(dsn: str) -> None:
    """Run a worker until its signal handlers stop it."""
    async with _chancy(dsn) as chancy, Worker(chancy) as worker:
        await worker.wait_for_shutdown()


def run_worker(dsn: str, config: Config) -> None:
    """Run one Chancy worker with the default plugins; it stops gracefully on SIGTERM.

    The queue's concurrency was declared by ``migrate``.
    """
    asyncio.run(_work(dsn))
