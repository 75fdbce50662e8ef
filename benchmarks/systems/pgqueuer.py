"""PgQueuer 1.6.0: one asyncpg connection, uvloop, ``PgQueuer.run(...)``.

``concurrency`` is ``max_concurrent_tasks``; ``batch_size`` (jobs per fetch) may be at most
half of it (PgQueuer refuses more).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import uvloop
from pgqueuer import PgQueuer, Queries
from pgqueuer.models import Job

from systems._common import Config, record_probe

REQUIREMENTS = ("pgqueuer==1.6.0", "asyncpg==0.32.0", "uvloop")
PYTHON = "python3"
SETTINGS = {"concurrency": 100, "batch_size": 50}
SWEEP = (
    {"concurrency": 50, "batch_size": 25},
    {"concurrency": 100, "batch_size": 10},
    {"concurrency": 100, "batch_size": 50},
    {"concurrency": 200, "batch_size": 100},
    {"concurrency": 500, "batch_size": 100},
    {"concurrency": 500, "batch_size": 250},
)
# Until a sweep is recorded: METHOD.md's configuration.
BEST = {"concurrency": 100, "batch_size": 50}

# Finished jobs leave the ``pgqueuer`` table and are logged in ``pgqueuer_log``.
PROGRESS_SQL = "SELECT count(*) FILTER (WHERE status = 'queued'), count(*) FROM pgqueuer"
SUCCEEDED_SQL = "SELECT count(DISTINCT job_id) FROM pgqueuer_log WHERE status = 'successful'"


class PgQueuerClient:
    """Producer over one asyncpg connection."""

    def __init__(self, queries: Queries) -> None:
        self._queries = queries

    async def enqueue_bulk(self, count: int, batch_size: int) -> None:
        """One ``INSERT ... SELECT unnest`` per batch; each job's payload is its ``i``."""
        for start in range(0, count, batch_size):
            size = min(batch_size, count - start)
            payloads: list[bytes | None] = [str(i).encode() for i in range(start, start + size)]
            await self._queries.enqueue(["noop"] * size, payloads, [0] * size)

    async def push_one(self, i: int) -> None:
        """``enqueue`` one job (scalar arguments)."""
        await self._queries.enqueue("noop", str(i).encode())

    async def push_probe(self, pushed_at: float) -> None:
        """Queue one probe; its payload is the push time as text."""
        await self._queries.enqueue("probe", repr(pushed_at).encode())


async def migrate(dsn: str, config: Config) -> None:
    """Run PgQueuer's installer."""
    connection = await asyncpg.connect(dsn)
    try:
        await Queries.from_asyncpg_connection(connection).install()
    finally:
        await connection.close()


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[PgQueuerClient]:
    """Open one asyncpg connection for producing."""
    connection = await asyncpg.connect(dsn)
    try:
        yield PgQueuerClient(Queries.from_asyncpg_connection(connection))
    finally:
        await connection.close()


async def _work(dsn: str, config: Config) -> None:
    """Register the two entrypoints and run the queue manager."""
    connection = await asyncpg.connect(dsn)
    pgq = PgQueuer.from_asyncpg_connection(connection)

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        """Do nothing."""

    @pgq.entrypoint("probe")
    async def probe(job: Job) -> None:
        """Record when this job started."""
        assert job.payload is not None
        record_probe(float(job.payload))

    concurrency = config["concurrency"]
    batch_size = max(1, min(config["batch_size"], concurrency // 2))  # PgQueuer's own bound
    await pgq.run(batch_size=batch_size, max_concurrent_tasks=concurrency)


def run_worker(dsn: str, config: Config) -> None:
    """Run one PgQueuer worker under uvloop."""
    uvloop.run(_work(dsn, config))
