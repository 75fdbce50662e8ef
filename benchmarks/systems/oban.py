"""Oban for Python 0.7.0 (needs Python 3.12+): one queue whose limit is ``concurrency``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from oban import Job, Oban
from oban.decorators import worker
from oban.schema import install

from systems._common import QUEUE, Config, record_probe

REQUIREMENTS = ("oban==0.7.0",)
PYTHON = "python3.12"
SETTINGS = {"concurrency": 100}
SWEEP = ({"concurrency": 50}, {"concurrency": 100}, {"concurrency": 200}, {"concurrency": 500})
# Until a sweep is recorded: METHOD.md's configuration.
BEST = {"concurrency": 100}

PROGRESS_SQL = (
    "SELECT count(*) FILTER (WHERE state = 'available'), count(*)"
    " FROM oban_jobs WHERE state IN ('available', 'scheduled', 'executing', 'retryable')"
)
SUCCEEDED_SQL = "SELECT count(*) FROM oban_jobs WHERE state = 'completed'"


@worker(queue=QUEUE)
class Noop:
    """Do nothing."""

    async def process(self, job: Job) -> None:
        """Do nothing."""


@worker(queue=QUEUE)
class Probe:
    """Record when this job started."""

    async def process(self, job: Job) -> None:
        """Record when this job started."""
        record_probe(job.args["pushed_at"])


class ObanClient:
    """Producer: an Oban instance in client mode (no queues)."""

    def __init__(self, oban: Oban) -> None:
        self._oban = oban

    async def enqueue_bulk(self, count: int, batch_size: int) -> None:
        """``enqueue_many`` once per batch, each job with its own ``i``."""
        for start in range(0, count, batch_size):
            # ``new`` is attached by ``@worker`` at run time, unseen by type checkers.
            jobs = [
                Noop.new({"i": i})  # type: ignore[attr-defined]
                for i in range(start, min(start + batch_size, count))
            ]
            await self._oban.enqueue_many(jobs)

    async def push_one(self, i: int) -> None:
        """``enqueue`` one job."""
        await self._oban.enqueue(Noop.new({"i": i}))  # type: ignore[attr-defined]

    async def push_probe(self, pushed_at: float) -> None:
        """Enqueue one probe."""
        await self._oban.enqueue(Probe.new({"pushed_at": pushed_at}))  # type: ignore[attr-defined]


async def migrate(dsn: str, config: Config) -> None:
    """Run Oban's installer."""
    pool = await Oban.create_pool(dsn)
    try:
        await install(pool)
    finally:
        await pool.close()


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[ObanClient]:
    """Open a pool and a client-mode Oban instance."""
    pool = await Oban.create_pool(dsn)
    try:
        yield ObanClient(Oban(pool=pool))
    finally:
        await pool.close()


async def _work(dsn: str, config: Config) -> None:
    """Run the ``bench`` queue until the process is terminated."""
    pool = await Oban.create_pool(dsn)
    async with Oban(pool=pool, queues={QUEUE: config["concurrency"]}):
        await asyncio.Event().wait()


def run_worker(dsn: str, config: Config) -> None:
    """Run one Oban node."""
    asyncio.run(_work(dsn, config))
