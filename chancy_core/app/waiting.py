"""Waiting for a job to finish: ``wait_for_job`` and its sync twin.

What to do at each turn (read again, wait for a notification, give up, retry after an
outage) is decided once, by :class:`Wait`; :func:`wait_for_job` and
:func:`sync_wait_for_job` only do the I/O it asks for, each on its own kind of
connection: a dedicated one that LISTENs on the app's channel (polling instead where
notifications cannot work: behind PgBouncer without ``listen_dsn``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, LiteralString

import anyio
import psycopg
from psycopg import sql

from chancy_core import admin, events
from chancy_core.app.database import Database
from chancy_core.connection import PGBOUNCER_POLL_INTERVAL
from chancy_core.errors import DatabaseUnavailableError, JobNotFoundError
from chancy_core.job import QueuedJob, Reference
from chancy_core.ops import Operation

__all__ = ["FINAL_STATES", "Wait", "sync_wait_for_job", "wait_for_job"]

log = logging.getLogger(__name__)

FINAL_STATES = frozenset({QueuedJob.State.SUCCEEDED, QueuedJob.State.FAILED})

# Taken before the first read: workers announce "done" only to waiters (the slot locks,
# see events.waiter_lock).
_WAITING: LiteralString = (
    "SELECT count(pg_advisory_lock_shared(%s::int4, n)) FROM generate_series(0, %s) AS n"
)


class Wait:
    """The decisions of one wait for a job, its I/O left to the caller."""

    def __init__(
        self, db: Database, ref: Reference | str, timeout: float | None, interval: float
    ) -> None:
        self.db = db
        self.job_id = str(admin.job_id(ref))
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.interval = interval
        schema = db.schema
        self.listen = sql.SQL("LISTEN {}").format(sql.Identifier(schema.channel))
        self.waiting = (_WAITING, (events.waiter_lock(schema.channel), events.WAITER_SLOTS - 1))

    def settled(self) -> None:
        """Call once PgBouncer support is settled: without notifications, poll often."""
        if not self.db.notifications:
            self.interval = min(self.interval, PGBOUNCER_POLL_INTERVAL)

    def read(self) -> Operation[QueuedJob | None]:
        """The read of the job."""
        return admin.get_job_op(self.db.schema, self.job_id)

    def read_limit(self) -> float:
        """Seconds the next connect-and-read may take."""
        limit = self.db.call_timeout
        return limit if self.deadline is None else max(0.05, self._within_deadline(limit))

    def outage(self, what: str, exc: Exception) -> float:
        """Seconds to pause before trying again after ``exc``, or raise at the deadline."""
        log.warning("%s: database unavailable (%s); retrying", what, exc)
        pause = self._within_deadline(min(self.interval, 1.0))
        if pause <= 0:
            raise DatabaseUnavailableError(
                f"job {self.job_id} did not finish within {self.timeout}s: the database"
                f" did not answer ({exc})"
            ) from exc
        return pause

    def seen(self, found: QueuedJob | None) -> QueuedJob | float:
        """The job if it finished; else seconds to wait for it (or raise: it vanished,
        or the deadline passed)."""
        if found is None:
            raise JobNotFoundError(f"job {self.job_id} does not exist (pruned or never pushed)")
        if found.state in FINAL_STATES:
            return found
        wait = self._within_deadline(self.interval)
        if wait <= 0:
            raise TimeoutError(
                f"job {self.job_id} did not finish within {self.timeout}s (it is"
                f" {found.state.value})"
            )
        return wait

    def _within_deadline(self, seconds: float) -> float:
        """``seconds``, or the time left if the deadline comes first (<= 0: it passed)."""
        return seconds if self.deadline is None else min(seconds, self.deadline - time.monotonic())

    def finishes(self, note: psycopg.Notify) -> bool:
        """Whether ``note`` says the job finished."""
        return events.finishes(note.payload, self.job_id)


async def wait_for_job(db: Database, plan: Wait) -> QueuedJob:
    """Wait as ``plan`` decides, on an async connection (reconnecting after an outage)."""
    conn: psycopg.AsyncConnection[Any] | None = None
    if db.settings.pgbouncer is None:
        with contextlib.suppress(DatabaseUnavailableError):  # retried below
            await anyio.to_thread.run_sync(db.resolve_pgbouncer)
    plan.settled()
    try:
        while True:
            try:
                with anyio.move_on_after(plan.read_limit()) as scope:
                    if conn is None or conn.closed:
                        conn = await db.connect()
                        if db.notifications:
                            await conn.execute(*plan.waiting)
                            await conn.execute(plan.listen)
                    found = await db.run(conn, plan.read())
                if scope.cancelled_caught:
                    raise db.too_slow("wait_for_job")
            except (psycopg.OperationalError, DatabaseUnavailableError) as exc:
                if conn is not None:
                    await conn.close()
                conn = None
                await anyio.sleep(plan.outage("wait_for_job", exc))
                continue
            wait = plan.seen(found)
            if isinstance(wait, QueuedJob):
                return wait
            if conn is None or not db.notifications:
                await anyio.sleep(wait)
                continue
            try:
                async for note in conn.notifies(timeout=wait):
                    if plan.finishes(note):
                        break
            except psycopg.OperationalError:
                await conn.close()
                conn = None
    finally:
        if conn is not None:
            await conn.close()


def sync_wait_for_job(db: Database, plan: Wait) -> QueuedJob:
    """Wait as ``plan`` decides, on a sync connection (as :func:`wait_for_job`)."""
    conn: psycopg.Connection[Any] | None = None
    with contextlib.suppress(DatabaseUnavailableError):  # retried below
        db.resolve_pgbouncer()
    plan.settled()
    try:
        while True:
            try:
                if conn is None or conn.closed:
                    conn = db.sync_connect()
                    if db.notifications:
                        conn.execute(*plan.waiting)
                        conn.execute(plan.listen)
                with db.sync_deadline(conn, "sync_wait_for_job"):
                    found = db.run_sync(conn, plan.read())
            except (psycopg.OperationalError, DatabaseUnavailableError) as exc:
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(plan.outage("sync_wait_for_job", exc))
                continue
            wait = plan.seen(found)
            if isinstance(wait, QueuedJob):
                return wait
            if conn is None or not db.notifications:
                time.sleep(wait)
                continue
            try:
                for note in conn.notifies(timeout=wait):
                    if plan.finishes(note):
                        break
            except psycopg.OperationalError:
                conn.close()
                conn = None
    finally:
        if conn is not None:
            conn.close()
