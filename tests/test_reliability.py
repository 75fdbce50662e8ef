"""Reliability holes of the test audit (issue 10), through public behaviour only.

* The completion fence's attempt clause alone: the same worker claims a rescued job
  again while its first run still executes.
* The heartbeat's orphan check releases old lost claims, never young ones.
* A push, a push_many and a wait_for_job during a database outage raise exactly
  ``DatabaseUnavailableError`` (never a raw psycopg error), and work again after it.
* Connection options and PgBouncer settings (no pooler needed: what is sent).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import uuid
from datetime import UTC, datetime, timedelta

import anyio
import psycopg
import pytest
import test_worker_support as s
from psycopg.conninfo import conninfo_to_dict
from test_worker_faults import Server, own_postgres  # noqa: F401 - the fixture

from chancy_core import Chancy, Job, Queue, QueuedJob
from chancy_core.connection import (
    DEFAULT_OPTIONS,
    PGBOUNCER_ENV,
    ConnectionSettings,
    split_dsn,
)
from chancy_core.errors import ConfigurationError, DatabaseUnavailableError
from chancy_core.testing import TEST_ADMIN_DSN_ENV, dsn_for_database

RUNS: dict[str, list[int]] = {}  # tag -> the attempts it ran as


async def first_attempt_slow_and_failing(tag: str, job_context: QueuedJob) -> int:
    """Attempt 1 runs 1.5 s and fails; any later attempt succeeds at once."""
    RUNS.setdefault(tag, []).append(job_context.attempts)
    if job_context.attempts == 1:
        await asyncio.sleep(1.5)
        raise RuntimeError("attempt 1 fails late")
    return job_context.attempts


# --- the fence's attempt clause ----------------------------------------------------------


@pytest.mark.db
@pytest.mark.anyio
async def test_a_late_outcome_of_an_earlier_attempt_on_the_same_worker_is_fenced(
    chancy, run_worker
):
    """Promise 2, the attempt alone: the worker id matches, only the attempt differs."""
    tag = uuid.uuid4().hex
    with anyio.fail_after(20):
        await chancy.declare(Queue("q", concurrency=4, polling_interval=0.1))
        async with run_worker(chancy):
            ref = await chancy.push(
                Job.from_func(
                    first_attempt_slow_and_failing, queue="q", kwargs={"tag": tag}, max_attempts=3
                )
            )
            await s.wait_state(chancy, ref, "running")
            # A rescue (what the recovery plugin does): back to pending, attempt kept.
            await s.query(
                chancy,
                "UPDATE {jobs} SET state = 'pending', taken_by = NULL WHERE id = %s",
                (uuid.UUID(str(ref)),),
            )
            await s.wait_until(lambda: len(RUNS.get(tag, [])) == 2, timeout=5, what="run 2")
            done = await s.wait_state(chancy, ref, "succeeded", timeout=5)
            await anyio.sleep(2.0)  # run 1 ends (fails) meanwhile; its write is fenced
    row = await s.job_row(chancy, ref)
    assert RUNS[tag] == [1, 2]
    assert done.attempts == 2
    assert row["state"] == "succeeded" and row["attempts"] == 2
    assert row["errors"] == [], row["errors"]  # attempt 1's failure never landed


# --- the heartbeat's orphan check -----------------------------------------------------------


@pytest.mark.db
@pytest.mark.anyio
async def test_the_orphan_check_releases_old_lost_claims_and_never_young_ones(chancy, run_worker):
    """Rows `running` under a live worker that does not run them: one claimed 30 s ago
    (its answer was lost) goes back to pending; one claimed just now (the answer may be
    on its way) stays."""
    with anyio.fail_after(20):
        # paused: a released row stays pending instead of being claimed again at once
        await chancy.declare(Queue("idle", state=Queue.State.PAUSED))
        # heartbeat 1 s: claims younger than 2 x 1 + 2 = 4 s are left alone
        async with run_worker(chancy, heartbeat_interval=1.0) as worker:
            old = await s.insert_row(
                chancy, queue="idle", func="test_worker_support.noop", state="running",
                attempts=1, taken_by=worker.worker_id,
                started_at=datetime.now(UTC) - timedelta(seconds=30),
            )  # fmt: skip
            young = await s.insert_row(
                chancy, queue="idle", func="test_worker_support.noop", state="running",
                attempts=1, taken_by=worker.worker_id,
                started_at=datetime.now(UTC),
            )  # fmt: skip
            await s.wait_row(chancy, old, "pending", timeout=3)
            young_row = await s.job_row(chancy, young)
    assert young_row["state"] == "running" and young_row["taken_by"] == worker.worker_id


# --- pushes and waits during an outage -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.db
@pytest.mark.anyio
async def test_calls_during_an_outage_raise_database_unavailable_and_work_after(
    own_postgres: Server,  # noqa: F811 - the fixture
):
    with anyio.fail_after(90):
        async with Chancy(
            own_postgres.dsn, connect_timeout=2, call_timeout=5, autoload_plugins=False
        ) as app:
            await app.migrate()
            first = await app.push(Job(func="m.f", unique_key="k1"))
            for mode in ("fast", "immediate"):
                await anyio.to_thread.run_sync(own_postgres.stop, mode)
                calls = {
                    "push": app.push(Job(func="m.f")),
                    "push_many": app.push_many([Job(func="m.f")] * 3),
                    "get_job": app.get_job(first),
                    "wait_for_job": app.wait_for_job(first, timeout=3),
                }
                for what, call in calls.items():
                    with pytest.raises(DatabaseUnavailableError) as raised:
                        await call
                    assert not isinstance(raised.value, psycopg.Error), what
                with pytest.raises(DatabaseUnavailableError):
                    await anyio.to_thread.run_sync(lambda: app.sync_push(Job(func="m.f")))
                await anyio.to_thread.run_sync(own_postgres.start)
                for _ in range(50):  # as an application does: the pool reconnects with backoff
                    try:
                        again = await app.push(Job(func="m.f", unique_key="k1"))
                        break
                    except DatabaseUnavailableError:
                        await anyio.sleep(0.2)
                assert again == first  # a retried push with its unique key: no duplicate
                assert (await app.get_job(first)) is not None
            await anyio.to_thread.run_sync(app.sync_close)


# --- connection settings -------------------------------------------------------------------


def test_chancy_parameters_in_the_dsn_are_taken_out_of_what_libpq_sees(monkeypatch):
    monkeypatch.delenv(PGBOUNCER_ENV, raising=False)  # the settings alone
    assert split_dsn("postgresql://u@h:6432/db?pgbouncer=true&sslmode=disable") == (
        "postgresql://u@h:6432/db?sslmode=disable",
        {"pgbouncer": True},
    )
    assert split_dsn("host=h dbname=db prepare_threshold=none pgbouncer=0") == (
        "host=h dbname=db",
        {"prepare_threshold": None, "pgbouncer": False},
    )
    app = Chancy("postgresql://u@h/db?prepare_threshold=0")
    assert app.dsn == "postgresql://u@h/db"
    assert app._db.connect_kwargs()["prepare_threshold"] == 0
    with pytest.raises(ConfigurationError, match="true or false"):
        Chancy("postgresql://u@h/db?pgbouncer=maybe")


def test_connection_defaults_keepalives_timeouts_and_pgbouncer_mode(monkeypatch):
    monkeypatch.delenv(PGBOUNCER_ENV, raising=False)  # the settings alone
    kwargs = Chancy("postgresql://u@h/db", pgbouncer=False)._db.connect_kwargs()
    assert {k: kwargs[k] for k in DEFAULT_OPTIONS} == DEFAULT_OPTIONS
    assert kwargs["options"] == "-c statement_timeout=30000"
    assert "prepare_threshold" not in kwargs
    given = Chancy(
        "postgresql://u@h/db?keepalives_idle=5&options=-c%20work_mem%3D8MB",
        connection_options={"tcp_user_timeout": 1000},
        statement_timeout=2.5,
        pgbouncer=False,
    )._db.connect_kwargs()
    assert "keepalives_idle" not in given  # the DSN's wins
    assert given["tcp_user_timeout"] == 1000
    assert given["options"] == "-c work_mem=8MB -c statement_timeout=2500"
    bounced = Chancy("postgresql://u@h:6432/db", pgbouncer=True)
    assert bounced._db.connect_kwargs()["prepare_threshold"] is None
    assert "options" not in bounced._db.connect_kwargs()  # PgBouncer refuses it
    assert not bounced.notifications
    direct = Chancy("postgresql://u@h:6432/db", pgbouncer=True, listen_dsn="postgresql://u@h/db")
    assert direct.notifications
    assert direct._db.dedicated_dsn() == ("postgresql://u@h/db", True)
    with pytest.raises(ConfigurationError, match="always autocommit"):
        Chancy("postgresql://u@h/db", connection_options={"autocommit": False})
    with pytest.raises(ConfigurationError, match="libpq parameters"):
        Chancy("postgresql://u@h/db", connection_options={"no_such_option": 1})
    with pytest.raises(ConfigurationError, match="call_timeout"):
        Chancy("postgresql://u@h/db", call_timeout=0)
    assert ConnectionSettings(pgbouncer=None).notifications


@pytest.mark.db
@pytest.mark.anyio
async def test_statement_timeout_reaches_the_server_and_detection_says_direct(
    database, monkeypatch
):
    monkeypatch.delenv(PGBOUNCER_ENV, raising=False)  # detection, on the server itself
    admin = os.environ.get(TEST_ADMIN_DSN_ENV)  # the server itself, when tests go through PgBouncer
    if admin:
        database = dsn_for_database(admin, str(conninfo_to_dict(database)["dbname"]))
    async with Chancy(database, statement_timeout=1.5, pgbouncer=None) as app:
        async with app.pool.connection() as conn:
            cur = await conn.execute("SHOW statement_timeout")
            assert (await cur.fetchone()) == ("1500ms",)
        assert app.settings.pgbouncer is False  # the server's own port: no pooler
        migrating = await app.connect(statement_timeout=False)
        async with migrating:
            cur = await migrating.execute("SHOW statement_timeout")
            assert (await cur.fetchone()) == ("0",)


# --- bounded in-flight work with a slow completion write ------------------------------------

SLOW_COMPLETION = """
CREATE TABLE held_at_write (n integer NOT NULL);
CREATE FUNCTION slow_completion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- once per write (transaction): record the rows the worker holds, then be slow
    IF current_setting('chancy_test.slept', true) IS DISTINCT FROM txid_current()::text THEN
        PERFORM set_config('chancy_test.slept', txid_current()::text, true);
        INSERT INTO held_at_write
            SELECT count(*) FROM {jobs} WHERE state = 'running' AND queue = OLD.queue;
        PERFORM pg_sleep(0.4);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER slow_completion BEFORE UPDATE ON {jobs} FOR EACH ROW
    WHEN (OLD.state = 'running' AND NEW.state IN ('succeeded', 'failed'))
    EXECUTE FUNCTION slow_completion();
"""


@pytest.mark.slow
@pytest.mark.db
@pytest.mark.anyio
@pytest.mark.parametrize("executor", ["async", "thread", "process"])
async def test_a_slow_completion_write_never_lets_claims_run_ahead(chancy, run_worker, executor):
    """Promise 4, checked at every completion write (not sampled): with each write slowed
    to 0.4 s, a worker holds at most 2 x concurrency rows `running` in the queue, and
    executes at most concurrency jobs at once."""
    concurrency = 5
    func = {"async": s.counted, "thread": s.counted_sync, "process": s.counted_sync}[executor]
    s.GAUGE.reset()
    await s.query(chancy, SLOW_COMPLETION)
    with anyio.fail_after(60):
        await chancy.declare(
            Queue("q", executor=executor, concurrency=concurrency, polling_interval=0.1)
        )
        async with run_worker(chancy):
            refs = await chancy.push_many([s.make_job(func, "q", seconds=0.01)] * 60)
            await s.wait_all(chancy, refs, "succeeded", timeout=50)
    held = [r[0] for r in await s.query(chancy, "SELECT n FROM held_at_write")]
    assert held and max(held) <= 2 * concurrency, held
    assert max(held) >= concurrency, held  # writes did start with every slot taken
    if executor != "process":  # the gauge lives in this process
        assert 0 < s.GAUGE.max <= concurrency


@pytest.mark.slow
@pytest.mark.db
@pytest.mark.anyio
async def test_an_outcome_held_up_past_the_orphan_age_is_not_taken_for_an_orphan(
    chancy, run_worker, database, caplog
):
    """The job's completion write waits 4 s on a row lock (longer than the orphan age of
    2 x 0.5 + 2 = 3 s): the heartbeat must not put the job back (it is the worker's own
    unwritten outcome), and the job ends succeeded after one run."""
    tag = uuid.uuid4().hex
    with anyio.fail_after(30):
        await chancy.declare(Queue("q", polling_interval=0.1))
        async with run_worker(chancy, heartbeat_interval=0.5):
            ref = await chancy.push(s.make_job(s.counted_run, "q", tag=tag, seconds=0.5))
            await s.wait_state(chancy, ref, "running")
            locker = await psycopg.AsyncConnection.connect(database)
            async with locker, locker.transaction():
                await locker.execute(
                    chancy.schema.compose("SELECT 1 FROM {jobs} WHERE id = %s FOR UPDATE"),
                    (uuid.UUID(str(ref)),),
                )
                await anyio.sleep(4.0)  # the job ends meanwhile; its write waits
            done = await s.wait_state(chancy, ref, "succeeded", timeout=10)
            await anyio.sleep(1.0)  # a heartbeat or two after the write
    assert s.RUNS[tag] == 1 and done.attempts == 1
    assert "putting them back" not in caplog.text


# --- outcomes are never dropped (issue 10 round 2) ---------------------------------------------

FAIL_FIRST_WRITE = """
CREATE SEQUENCE refused_writes;  -- not rolled back with the write it refuses
CREATE FUNCTION refuse_first_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('refused_writes') = 1 THEN  -- the first outcome write fails, not the connection
        RAISE EXCEPTION 'injected: this write fails once' USING ERRCODE = '0A000';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_first_write BEFORE UPDATE ON {jobs} FOR EACH ROW
    WHEN (OLD.state = 'running' AND NEW.state IN ('succeeded', 'failed'))
    EXECUTE FUNCTION refuse_first_write();
"""


@pytest.mark.db
@pytest.mark.anyio
async def test_an_outcome_whose_write_fails_is_kept_and_written_later(chancy, run_worker):
    """A write that fails for a reason other than the fence (here: a trigger refuses it
    once) keeps the outcome and retries it: the job succeeds after one run, instead of
    being dropped, left `running`, put back by the orphan check and run again."""
    tag = uuid.uuid4().hex
    await s.query(chancy, FAIL_FIRST_WRITE)
    with anyio.fail_after(30):
        await chancy.declare(Queue("q", polling_interval=0.1))
        async with run_worker(chancy, heartbeat_interval=0.5):
            ref = await chancy.push(s.make_job(s.counted_run, "q", tag=tag, seconds=0.05))
            done = await s.wait_state(chancy, ref, "succeeded", timeout=20)
    assert s.RUNS[tag] == 1 and done.attempts == 1


def test_the_defaults_the_documented_delays_rest_on(monkeypatch):
    """docs/guarantees.md's formulas use these defaults (test audit S3)."""
    monkeypatch.delenv(PGBOUNCER_ENV, raising=False)  # the settings alone
    from chancy_core.worker import Worker

    app = Chancy("postgresql://u@h/db")
    defaults = inspect.signature(Worker).parameters  # a Worker made and not run leaks streams
    assert (defaults["heartbeat_interval"].default, defaults["shutdown_timeout"].default) == (
        5.0,
        30.0,
    )
    assert (app.settings.statement_timeout, app.call_timeout) == (30.0, 35.0)
    assert app.connect_timeout == 10.0


# --- self-fencing (issue 10 round 2) -----------------------------------------------------------

REFUSE_HEARTBEATS = """
CREATE FUNCTION refuse_heartbeat() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'injected: heartbeats fail' USING ERRCODE = '0A000';
END $$;
CREATE TRIGGER refuse_heartbeat BEFORE UPDATE ON {workers} FOR EACH ROW
    EXECUTE FUNCTION refuse_heartbeat();
"""


@pytest.mark.db
@pytest.mark.anyio
async def test_a_worker_that_cannot_write_its_heartbeat_stops_its_jobs(chancy, run_worker, caplog):
    """Self-fencing: after ``fence_after`` seconds without a written heartbeat the worker
    stops its running job (before a recovery plugin could rescue it elsewhere); once the
    heartbeat is written again the orphan check puts the job back, and it runs again."""
    tag = uuid.uuid4().hex
    with anyio.fail_after(60):
        await chancy.declare(Queue("q", polling_interval=0.1))
        async with run_worker(chancy, heartbeat_interval=0.3, fence_after=1.5):
            ref = await chancy.push(s.make_job(s.counted_run, "q", tag=tag, seconds=3.0))
            await s.wait_state(chancy, ref, "running")
            began = anyio.current_time()
            await s.query(chancy, REFUSE_HEARTBEATS)
            await s.wait_until(
                lambda: "before another worker may rescue" in caplog.text,
                timeout=10,
                what="the worker to fence itself",
            )
            fenced_after = anyio.current_time() - began
            row = await chancy.get_job(ref)
            assert row is not None and row.state.value == "running"  # not written: fenced
            await s.query(chancy, "DROP TRIGGER refuse_heartbeat ON {workers}")
            done = await s.wait_state(chancy, ref, "succeeded", timeout=30)
    assert 1.5 - 0.3 - 0.1 <= fenced_after < 1.5 + 5, fenced_after  # from the last beat
    assert s.RUNS[tag] == 2  # the fenced run, then the one after the orphan check put it back
    assert done.attempts == 1  # a put-back attempt is not counted


@pytest.mark.db
@pytest.mark.anyio
async def test_without_notifications_the_worker_does_not_listen_and_polls_fast(
    database, run_worker, caplog
):
    """Behind PgBouncer without listen_dsn (here: pgbouncer=True on a direct DSN) no LISTEN
    can work: the worker starts no listener (no LISTEN session in pg_stat_activity) and
    each queue polls every 0.5 s at most, even with polling_interval=60."""
    caplog.set_level(logging.INFO, logger="chancy_core.worker.worker")
    async with Chancy(database, pgbouncer=True, autoload_plugins=False) as app:
        assert not app.notifications
        with anyio.fail_after(30):
            await app.declare(Queue("q", polling_interval=60.0))
            async with run_worker(app, heartbeat_interval=0.5):
                await anyio.sleep(1.0)  # a first empty claim: now it waits
                ref = await app.push(s.make_job(s.noop, "q"))
                began = anyio.current_time()
                await s.wait_state(app, ref, "succeeded", timeout=10)
                took = anyio.current_time() - began
                listening = await s.query(
                    app,
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND query ILIKE 'LISTEN%%'",
                )
    assert took < 0.5 + 2.0, took
    assert listening == [(0,)]
    assert "no wake-ups" in caplog.text


SLOW_FIRST_WRITE = """
CREATE SEQUENCE slowed_writes;
CREATE FUNCTION slow_first_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('slowed_writes') = 1 THEN
        PERFORM pg_sleep(3);  -- the first outcome write is slow; the others wait behind it
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER slow_first_write BEFORE UPDATE ON {jobs} FOR EACH ROW
    WHEN (OLD.state = 'running' AND NEW.state IN ('succeeded', 'failed'))
    EXECUTE FUNCTION slow_first_write();
"""


@pytest.mark.db
@pytest.mark.anyio
async def test_a_queue_held_back_by_unwritten_outcomes_says_so_once(chancy, run_worker, caplog):
    """Backpressure: with as many unwritten outcomes as its concurrency a queue stops
    claiming, says why once at WARNING, and claims again once they are written."""
    await s.query(chancy, SLOW_FIRST_WRITE)
    with anyio.fail_after(40):
        await chancy.declare(Queue("q", concurrency=1, polling_interval=0.1))
        async with run_worker(chancy, heartbeat_interval=0.5, completion_delay=0):
            refs = [await chancy.push(s.make_job(s.noop, "q")) for _ in range(6)]
            for ref in refs:
                await s.wait_state(chancy, ref, "succeeded", timeout=20)
    held = [r for r in caplog.records if "not claiming while" in r.getMessage()]
    assert len(held) == 1 and held[0].levelname == "WARNING", [r.getMessage() for r in held]
