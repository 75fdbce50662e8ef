"""awa-pg 0.6.9 (Rust core): queue-storage engine, COPY ingestion, ``max_workers=concurrency``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import awa

from systems._common import QUEUE, Config, record_probe, with_tcp_style_host

REQUIREMENTS = ("awa-pg==0.6.9",)
PYTHON = "python3"
SETTINGS = {"concurrency": 100}
SWEEP = ({"concurrency": 50}, {"concurrency": 100}, {"concurrency": 200}, {"concurrency": 500})
# Until a sweep is recorded: METHOD.md's configuration.
BEST = {"concurrency": 100}

# The ``awa.jobs`` and ``awa.terminal_jobs`` views take seconds to minutes to count, so
# the counts come from the tables under them. Queued = ``ready_entries`` rows; finished =
# ``done_entries`` rows plus the job ids in ``receipt_completion_batches``; segments the
# ring has already pruned are counted in ``queue_terminal_rollups``, on both sides.
# "Waiting" also subtracts live leases and claim receipts: approximate, used only to see
# the first claim.
_COUNTS = """
    SELECT (SELECT count(*) FROM awa.ready_entries) + pruned.done + pruned.failed AS queued,
           (SELECT count(*) FROM awa.done_entries)
             + (SELECT coalesce(sum(cardinality(job_ids)), 0)
                FROM awa.receipt_completion_batches)
             + pruned.done AS done,
           (SELECT count(*) FROM awa.leases)
             + (SELECT count(*) FROM awa.lease_claims) AS claimed
    FROM (SELECT coalesce(sum(pruned_completed_count), 0) AS done,
                 coalesce(sum(pruned_failed_count), 0) AS failed
          FROM awa.queue_terminal_rollups) pruned
"""
PROGRESS_SQL = (
    f"SELECT greatest(queued - done - claimed, 0), greatest(queued - done, 0) FROM ({_COUNTS}) c"
)
SUCCEEDED_SQL = f"SELECT done FROM ({_COUNTS}) c"


@dataclass
class Noop:
    """Arguments of the no-op job (kind ``noop``)."""

    i: int


@dataclass
class Probe:
    """Arguments of the probe job (kind ``probe``)."""

    pushed_at: float


class AwaClient:
    """Producer over an ``AsyncClient``."""

    def __init__(self, client: awa.AsyncClient) -> None:
        self._client = client

    async def enqueue_bulk(self, count: int, batch_size: int) -> None:
        """``enqueue_many_copy`` (COPY into queue storage) once per batch, each with its ``i``."""
        for start in range(0, count, batch_size):
            await self._client.enqueue_many_copy(
                [Noop(i) for i in range(start, min(start + batch_size, count))], queue=QUEUE
            )

    async def push_one(self, i: int) -> None:
        """``insert`` one job."""
        await self._client.insert(Noop(i), queue=QUEUE)

    async def push_probe(self, pushed_at: float) -> None:
        """Insert one probe."""
        await self._client.insert(Probe(pushed_at), queue=QUEUE)


async def migrate(dsn: str, config: Config) -> None:
    """Run awa's migrations and activate the queue-storage engine (what a fresh install gets)."""
    async with awa.AsyncClient(with_tcp_style_host(dsn)) as client:
        await client.migrate()
        await client.install_queue_storage()


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[AwaClient]:
    """Open an ``AsyncClient`` for producing."""
    async with awa.AsyncClient(with_tcp_style_host(dsn)) as client:
        yield AwaClient(client)


async def _work(dsn: str, config: Config) -> None:
    """Register both handlers and run the runtime until the process is terminated."""
    client = awa.AsyncClient(with_tcp_style_host(dsn))

    @client.task(Noop, queue=QUEUE)
    async def noop(job: awa.Job[Noop]) -> None:
        """Do nothing."""

    @client.task(Probe, queue=QUEUE)
    async def probe(job: awa.Job[Probe]) -> None:
        """Record when this job started."""
        record_probe(job.args.pushed_at)

    await client.start([{"name": QUEUE, "max_workers": config["concurrency"]}])
    await asyncio.Event().wait()


def run_worker(dsn: str, config: Config) -> None:
    """Run one awa worker runtime."""
    asyncio.run(_work(dsn, config))
