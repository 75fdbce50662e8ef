"""The jobs the chaos suite runs.

Each ``tracked`` job records its execution in ``chaos_executions`` (an id of its own,
the job's id and attempt, the worker that ran it, the process, and start and end times
from the database's ``clock_timestamp()``), so that a suite can check afterwards that
no two executions of a job overlapped and that every re-run is explained.

The recording writes retry on connection errors (the database restart test stops the
server under running jobs) and are idempotent: an execution's id is made here, so an
insert whose commit was lost and that is sent again does not record it twice.

This module imports little, so that the process executor's children start quickly.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import anyio
import psycopg
from psycopg.conninfo import make_conninfo

from chancy_core import QueuedJob

__all__ = ["noop", "noop_sync", "sleep", "sleep_sync", "tracked", "tracked_sync"]

DSN_ENV = "CHAOS_JOBS_DSN"  # where jobs record their executions
WORKER_ENV = "CHAOS_WORKER_ID"  # the worker (process group) a job runs in
RETRY_FOR = 120.0  # seconds a recording write keeps trying while the database is away

EXECUTIONS_DDL = """
CREATE TABLE IF NOT EXISTS chaos_executions (
    exec_id      uuid PRIMARY KEY,
    job_id       uuid NOT NULL,
    attempt      integer NOT NULL,
    worker_id    text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz
);
CREATE INDEX IF NOT EXISTS chaos_executions_job_idx ON chaos_executions (job_id, started_at);
CREATE TABLE IF NOT EXISTS chaos_kills (
    worker_id  text PRIMARY KEY,
    pid        integer NOT NULL,
    killed_at  timestamptz NOT NULL
);
"""

_START = """
INSERT INTO chaos_executions (exec_id, job_id, attempt, worker_id, pid)
VALUES (%s, %s, %s, %s, %s) ON CONFLICT (exec_id) DO NOTHING
"""
_RUNS = "SELECT count(*) FROM chaos_executions WHERE job_id = %s"
_END = "UPDATE chaos_executions SET finished_at = clock_timestamp() WHERE exec_id = %s"


def _dsn() -> str:
    return make_conninfo(os.environ[DSN_ENV], application_name="chaos_job")


# --- async jobs (the worker's event loop; one connection shared by the process's jobs) ---

_aconn: psycopg.AsyncConnection[Any] | None = None
_alock: anyio.Lock | None = None


async def _aexecute(statement: str, params: tuple[Any, ...]) -> Any:
    global _aconn, _alock
    if _alock is None:
        _alock = anyio.Lock()
    deadline = time.monotonic() + RETRY_FOR
    while True:
        try:
            async with _alock:
                if _aconn is None or _aconn.closed:
                    _aconn = await psycopg.AsyncConnection.connect(
                        _dsn(), autocommit=True, connect_timeout=5
                    )
                conn = _aconn
            cur = await conn.execute(statement, params)  # type: ignore[arg-type]
            return await cur.fetchone() if cur.description else None
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg.InternalError):
            # InternalError: "got no result from the query", a connection lost mid-query.
            if time.monotonic() > deadline:
                raise
            async with _alock:
                if _aconn is not None:
                    await _aconn.close()
                    _aconn = None
            await anyio.sleep(0.2)


async def tracked(
    seconds: float, job_context: QueuedJob, rerun_seconds: float | None = None
) -> str:
    """Record this execution, sleep ``seconds`` (``rerun_seconds`` if the job ran before),
    and record its end."""
    exec_id = uuid.uuid4()
    worker = os.environ.get(WORKER_ENV, "?")
    await _aexecute(_START, (exec_id, job_context.id, job_context.attempts, worker, os.getpid()))
    if rerun_seconds is not None:
        runs = await _aexecute(_RUNS, (job_context.id,))
        if runs[0] > 1:
            seconds = rerun_seconds
    await anyio.sleep(seconds)
    await _aexecute(_END, (exec_id,))
    return worker


# --- sync jobs (thread and process executors; one connection per thread) ----------------

_local = threading.local()


def _execute(statement: str, params: tuple[Any, ...]) -> Any:
    deadline = time.monotonic() + RETRY_FOR
    while True:
        conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
        try:
            if conn is None or conn.closed:
                conn = _local.conn = psycopg.Connection.connect(
                    _dsn(), autocommit=True, connect_timeout=5
                )
            cur = conn.execute(statement, params)  # type: ignore[arg-type]
            return cur.fetchone() if cur.description else None
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg.InternalError):
            if time.monotonic() > deadline:
                raise
            if conn is not None:
                conn.close()
            _local.conn = None
            time.sleep(0.2)


def tracked_sync(seconds: float, job_context: QueuedJob, rerun_seconds: float | None = None) -> str:
    """:func:`tracked` for the thread and process executors."""
    exec_id = uuid.uuid4()
    worker = os.environ.get(WORKER_ENV, "?")
    _execute(_START, (exec_id, job_context.id, job_context.attempts, worker, os.getpid()))
    if rerun_seconds is not None and _execute(_RUNS, (job_context.id,))[0] > 1:
        seconds = rerun_seconds
    time.sleep(seconds)
    _execute(_END, (exec_id,))
    return worker


# --- jobs that touch no database ---------------------------------------------------------


async def sleep(seconds: float) -> None:
    await anyio.sleep(seconds)


def sleep_sync(seconds: float) -> None:
    time.sleep(seconds)


async def noop() -> None:
    return None


def noop_sync() -> None:
    return None
