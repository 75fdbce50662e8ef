"""Helpers of the recovery tests: a job that records its executions, and a worker process.

``python -m recovery_helpers DSN WORKER_ID`` runs a worker (no plugins) until killed.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import psycopg

from chancy_core import Chancy, QueuedJob, Worker

CREATE_EXECUTIONS = """
CREATE TABLE IF NOT EXISTS recovery_test_executions (
    id           serial PRIMARY KEY,
    job_id       uuid NOT NULL,
    pid          integer NOT NULL,
    attempt      integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz
)
"""


async def tracked(dsn: str, first: float, then: float, job_context: QueuedJob) -> int:
    """Record this execution, sleep (``first`` seconds on attempt 1, else ``then``), and
    record its end."""
    import os

    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    async with conn:
        cur = await conn.execute(
            "INSERT INTO recovery_test_executions (job_id, pid, attempt) VALUES (%s, %s, %s)"
            " RETURNING id",
            (job_context.id, os.getpid(), job_context.attempts),
        )
        row: Any = await cur.fetchone()
        await anyio.sleep(first if job_context.attempts == 1 else then)
        await conn.execute(
            "UPDATE recovery_test_executions SET finished_at = clock_timestamp() WHERE id = %s",
            (row[0],),
        )
    return job_context.attempts


async def serve(dsn: str, worker_id: str) -> None:
    async with Chancy(dsn, autoload_plugins=False) as app:
        await Worker(app, worker_id=worker_id, heartbeat_interval=0.2).serve()


if __name__ == "__main__":
    anyio.run(serve, sys.argv[1], sys.argv[2])
