"""Notifications wake the worker at once, and it keeps listening after losing the
listener's connection."""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import psycopg.sql
import pytest
import test_worker_support as s
from psycopg.conninfo import conninfo_to_dict

from chancy_core import Queue, events
from chancy_core.testing import TEST_ADMIN_DSN_ENV, dsn_for_database

pytestmark = [pytest.mark.anyio, pytest.mark.db]

LISTENERS = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND query ILIKE 'LISTEN%%' AND pid <> pg_backend_pid()
"""


async def push_latency(chancy, tag: str) -> float:
    """Seconds from a push to the job's start."""
    pushed = time.monotonic()
    await chancy.push(s.make_job(s.record, "q", tag=tag))
    await s.wait_until(lambda: tag in s.STARTS, timeout=3, interval=0.005, what=f"{tag} to start")
    return s.STARTS[tag] - pushed


async def test_a_push_starts_the_job_at_once(chancy, run_worker):
    """The polling interval is 10 s: only the notification can start jobs this fast."""
    s.STARTS.clear()
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", polling_interval=10))
        async with run_worker(chancy):
            await anyio.sleep(0.1)  # the fetch loop has claimed nothing and waits
            latencies = []
            for n in range(5):
                latencies.append(await push_latency(chancy, f"job{n}"))
                await anyio.sleep(0.05)
    print("push -> start latencies (s):", [round(x, 4) for x in latencies])
    assert statistics.median(latencies) < 0.1, latencies
    assert max(latencies) < 0.5, latencies


async def test_the_listener_reconnects_after_its_connection_is_killed(chancy, run_worker):
    s.STARTS.clear()
    with anyio.fail_after(15):
        await chancy.declare(Queue("q", polling_interval=10))
        async with run_worker(chancy):
            (old,) = await s.query(chancy, LISTENERS)
            await s.query(chancy, "SELECT pg_terminate_backend(%s)", old)

            async def reconnected() -> bool:
                rows = await s.query(chancy, LISTENERS)
                return bool(rows) and rows[0] != old

            await s.wait_until(reconnected, timeout=5, what="the listener to reconnect")
            assert await push_latency(chancy, "after") < 0.5
            # And once more: it keeps getting wake-ups.
            assert await push_latency(chancy, "again") < 0.5


def direct(dsn: str) -> str:
    """``dsn``'s database on the server itself (not through PgBouncer, when the tests run
    behind one: ``$CHANCY_TEST_ADMIN_DSN``)."""
    admin = os.environ.get(TEST_ADMIN_DSN_ENV)
    return dsn_for_database(admin, str(conninfo_to_dict(dsn)["dbname"])) if admin else dsn


@asynccontextmanager
async def connections_refused(dsn: str) -> AsyncIterator[None]:
    """While in the block, the server refuses new connections to ``dsn``'s database
    (``ALLOW_CONNECTIONS false``; connections already open go on working)."""
    name = psycopg.sql.Identifier(str(conninfo_to_dict(dsn)["dbname"]))
    maintenance = dsn_for_database(direct(dsn), "postgres")
    refuse = psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name)
    allow = psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name)
    async with await psycopg.AsyncConnection.connect(maintenance, autocommit=True) as admin:
        await admin.execute(refuse)
        try:
            yield
        finally:
            await admin.execute(allow)


async def test_a_push_missed_while_the_listener_is_away_runs_when_it_reconnects(
    database, chancy, run_worker, caplog
):
    """The missed wake-up, made deterministic: the listener's connection is terminated
    while the database refuses new connections, so it cannot reconnect; a push then wakes
    nobody (no backend LISTENs, as pg_stat_activity shows before and after its commit).
    Once connections are allowed again the listener reconnects and wakes every queue: the
    job starts within seconds, although its queue polls only every 120 s."""
    caplog.set_level(logging.WARNING, logger="chancy_core.worker.listener")
    s.STARTS.clear()
    with anyio.fail_after(90):
        await chancy.declare(Queue("q", polling_interval=120))
        # Opened first: it pushes and watches while new connections are refused.
        async with await psycopg.AsyncConnection.connect(
            direct(database), autocommit=True
        ) as observer:

            async def listeners() -> list[int]:
                cur = await observer.execute(LISTENERS)
                return [pid for (pid,) in await cur.fetchall()]

            async with run_worker(chancy):
                await s.wait_until(
                    lambda: listeners_are(listeners, 1), timeout=10, what="the listener"
                )
                (old,) = await listeners()
                await anyio.sleep(0.2)  # the fetch loop has claimed nothing and waits
                async with connections_refused(database):
                    await observer.execute("SELECT pg_terminate_backend(%s)", (old,))
                    await s.wait_until(
                        lambda: listeners_are(listeners, 0), timeout=10, what="no listener"
                    )
                    assert not await listeners()
                    (ref,) = await chancy.push_many_ex(
                        observer, [s.make_job(s.record, "q", tag="missed")]
                    )
                    assert not await listeners(), "a listener was back before the push"
                    await anyio.sleep(1.0)  # nothing else wakes the queue meanwhile
                    assert "missed" not in s.STARTS
                    assert not await listeners()
                    allowed = time.monotonic()
                await s.wait_until(
                    lambda: "missed" in s.STARTS, timeout=45, what="the missed job to start"
                )
                waited = s.STARTS["missed"] - allowed
                (new,) = await listeners()
                job = await s.wait_state(chancy, ref, "succeeded")
    print(f"connections allowed -> missed job started: {waited:.2f}s")
    assert new != old
    assert job.attempts == 1
    assert waited < 20  # the reconnect's wake-up, not the 120 s poll
    lost = [r for r in caplog.records if "listener lost its connection" in r.getMessage()]
    assert len(lost) >= 2, [r.getMessage() for r in lost]  # terminated, then refused


async def listeners_are(listeners, count: int) -> bool:
    return len(await listeners()) == count


async def test_malformed_notifications_are_ignored(chancy, run_worker):
    s.STARTS.clear()
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", polling_interval=10))
        async with run_worker(chancy) as worker:
            for payload in (
                "not json",
                "[1]",
                '{"e": "pushed", "q": [1]}',
                '{"e": "cancel", "ids": 5}',
            ):
                await s.query(chancy, "SELECT pg_notify(%s, %s)", (chancy.schema.channel, payload))
            await anyio.sleep(0.2)
            assert not worker._stopped.is_set()
            assert await push_latency(chancy, "fine") < 0.5


async def test_done_is_announced_only_while_someone_waits(chancy, run_worker):
    """No waiter: the completion sends no ``done``; a waiter (``wait_for_job``, which holds
    the waiters' lock) is woken by it although it would poll only every 30 s."""
    with anyio.fail_after(20):
        await chancy.declare(Queue("q", polling_interval=0.1))
        listener = await chancy.connect()
        try:
            await listener.execute(
                psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(chancy.schema.channel))
            )
            async with run_worker(chancy):
                unwatched = await chancy.push(s.make_job(s.noop, "q"))
                await s.wait_state(chancy, unwatched, "succeeded")
                await anyio.sleep(0.2)
                kinds = [
                    events.parse(note.payload) async for note in listener.notifies(timeout=0.2)
                ]
                assert not [e for e in kinds if e is not None and e.kind == events.DONE]

                watched = await chancy.push(s.make_job(s.sleeper, "q", seconds=0.5))
                started = time.monotonic()
                got = await chancy.wait_for_job(watched, timeout=10, interval=30)
                assert got.state.value == "succeeded"
                assert time.monotonic() - started < 5  # woken, not polled
        finally:
            await listener.close()
