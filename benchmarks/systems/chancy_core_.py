"""OUR system, chancy-core, as deployed: ``push_many`` for bulk, one ``Worker`` per process.

The recovery, pruner and leadership plugins are installed in the venv beside the core and
discovered through their entry points, as a user installing them gets them: migrations add
the pruner's index and the leadership table, and every worker runs the leadership task and
(on the leader) the recovery and pruner rounds with their default settings. The adapter
refuses to run if any of the three is missing.

The ``bench`` queue runs the async executor with ``concurrency`` slots: no-op jobs are
claimed in batches sized to free slots and their outcomes written in batches.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from chancy_core import Chancy, Job, Queue, Worker

from systems._common import QUEUE, Config, record_probe

# The repository root and the plugins a deployment installs, editable: every run measures
# the working tree.
REQUIREMENTS = (
    "--editable",
    "{repo}",
    "--editable",
    "{repo}/plugins/chancy-plugin-recovery",
    "--editable",
    "{repo}/plugins/chancy-plugin-pruner",
    "--editable",
    "{repo}/plugins/chancy-plugin-leadership",
)
PYTHON = "python3"
SETTINGS = {"concurrency": 100}
SWEEP = (
    {"concurrency": 50},
    {"concurrency": 100},
    {"concurrency": 200},
    {"concurrency": 500},
    {"concurrency": 1000},
)
# Until a sweep is recorded: the configuration of the 2026-11-29 table.
BEST = {"concurrency": 500}

#: Plugins a deployment runs (docs/guarantees.md asks for recovery in production).
DEPLOYED_PLUGINS = ("recovery", "pruner", "leadership")

# Only unfinished rows are counted (as for the peers): the fetch and running indexes serve it.
PROGRESS_SQL = (
    "SELECT count(*) FILTER (WHERE state = 'pending'), count(*)"
    " FROM chancy_jobs WHERE state IN ('pending', 'running', 'retrying')"
)
SUCCEEDED_SQL = "SELECT count(*) FROM chancy_jobs WHERE state = 'succeeded'"


async def noop(i: int) -> None:
    """The no-op job body every processed job runs."""


async def probe(pushed_at: float) -> None:
    """The latency probe's body: record when it started."""
    record_probe(pushed_at)


NOOP = Job.from_func(noop, queue=QUEUE)
PROBE = Job.from_func(probe, queue=QUEUE)


def _app(dsn: str) -> Chancy:
    """An app with the installed plugins discovered, as deployed; fails if one is missing."""
    app = Chancy(dsn, autoload_plugins=True)
    missing = [name for name in DEPLOYED_PLUGINS if not app.plugins.has_plugin(name)]
    if missing:
        raise RuntimeError(
            f"plugins {', '.join(missing)} not installed in this venv: run.py installs them"
            " from plugins/ (run it with --reinstall)"
        )
    return app


def _queue(config: Config) -> Queue:
    return Queue(QUEUE, concurrency=config["concurrency"], executor="async", polling_interval=1.0)


async def migrate(dsn: str, config: Config) -> None:
    """Apply chancy-core's and the plugins' migrations and declare ``bench``."""
    async with _app(dsn) as app:
        await app.migrate()
        await app.declare(_queue(config))


class ChancyCoreClient:
    """Producer over the app's pool."""

    def __init__(self, app: Chancy) -> None:
        self._app = app

    async def enqueue_bulk(self, count: int, batch_size: int) -> None:
        """``push_many`` of ``batch_size`` jobs per call, each built with ``with_kwargs``."""
        for start in range(0, count, batch_size):
            jobs = [NOOP.with_kwargs(i=i) for i in range(start, min(start + batch_size, count))]
            await self._app.push_many(jobs, batch_size=batch_size)

    async def push_one(self, i: int) -> None:
        """``push`` one job."""
        await self._app.push(NOOP.with_kwargs(i=i))

    async def push_probe(self, pushed_at: float) -> None:
        """Push one probe job."""
        await self._app.push(PROBE.with_kwargs(pushed_at=pushed_at))


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[ChancyCoreClient]:
    """Open the app (its pool) for producing."""
    async with _app(dsn) as app:
        yield ChancyCoreClient(app)


async def _work(dsn: str) -> None:
    async with _app(dsn) as app:
        await Worker(app, shutdown_timeout=5.0).serve()


def run_worker(dsn: str, config: Config) -> None:
    """Run one worker on ``bench`` (declared by ``migrate`` with ``config``) until SIGTERM."""
    logging.getLogger("chancy_core").setLevel(logging.WARNING)
    anyio.run(_work, dsn)
