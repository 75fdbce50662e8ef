"""The operator API (chancy_core.admin through Chancy): browsing jobs, queues and workers,
and acting on them, on a real PostgreSQL with real workers."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import anyio
import psycopg
import pytest
import test_worker_support as s

from chancy_core import Chancy, Job, JobPage, Queue, QueuedJob
from chancy_core.admin import JobFilter, list_jobs_statement
from chancy_core.app import COPY_MIN_JOBS
from chancy_core.errors import (
    ConfigurationError,
    InvalidJobError,
    JobNotFoundError,
    JobStateError,
    QueueNotFoundError,
)

pytestmark = [pytest.mark.db]


async def push_many(chancy: Chancy, queue: str, n: int, **kwargs: int) -> list[str]:
    refs = await chancy.push_many(
        [s.make_job(s.sync_add, queue, a=i, b=kwargs.get("b", 0)) for i in range(n)]
    )
    return [r.identifier for r in refs]


async def set_state(chancy: Chancy, ids: list[str], state: str) -> None:
    await s.query(
        chancy,
        "UPDATE {jobs} SET state = %s, attempts = 1,"
        " completed_at = CASE WHEN %s IN ('succeeded', 'failed') THEN now() END,"
        ' errors = CASE WHEN %s = \'failed\' THEN \'[{{"attempt": 1, "traceback": "boom"}}]\''
        " ELSE errors END WHERE id = ANY(%s::uuid[])",
        (state, state, state, ids),
    )


# --- list_jobs -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_list_jobs_pages_newest_first_through_every_job_once(chancy):
    a = await push_many(chancy, "a", 13)
    b = await push_many(chancy, "b", 12)
    newest_first = list(reversed(a + b))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await chancy.list_jobs(limit=10, cursor=cursor)
        assert isinstance(page, JobPage)
        seen += [j.id for j in page.jobs]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == newest_first and pages == 3


@pytest.mark.anyio
async def test_list_jobs_filters_by_queue_state_func_and_creation_time(chancy):
    a = await push_many(chancy, "a", 6)
    b = await push_many(chancy, "b", 4)
    await set_state(chancy, a[:2], "failed")
    await set_state(chancy, b[:1], "failed")
    other = await chancy.push(s.make_job(s.noop, "a"))

    async def ids(**flt: object) -> list[str]:
        found: list[str] = []
        cursor = None
        while True:
            page = await chancy.list_jobs(limit=2, cursor=cursor, **flt)  # type: ignore[arg-type]
            found += [j.id for j in page.jobs]
            if page.next_cursor is None:
                return found
            cursor = page.next_cursor

    assert await ids(queue="a") == list(reversed([*a, other.identifier]))
    assert await ids(state="failed") == list(reversed([*a[:2], b[0]]))
    assert await ids(queue="b", state=QueuedJob.State.FAILED) == [b[0]]
    assert await ids(state=["pending", "failed"], queue="b") == list(reversed(b))
    assert await ids(func="test_worker_support.noop") == [other.identifier]
    assert await ids(queue="a", func="test_worker_support.noop") == [other.identifier]
    assert await ids(queue="nope") == []
    assert await ids(since=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert len(await ids(until=datetime.now(UTC) + timedelta(minutes=1))) == 11
    assert len(await ids(state="pending", since=datetime.now(UTC) - timedelta(minutes=1))) == 8


@pytest.mark.anyio
async def test_list_jobs_refuses_bad_filters_and_cursors_clearly(chancy):
    with pytest.raises(ConfigurationError, match="unknown job state 'done'"):
        await chancy.list_jobs(state="done")
    with pytest.raises(ConfigurationError, match="invalid cursor 'x'"):
        await chancy.list_jobs(cursor="x")
    with pytest.raises(ConfigurationError, match="limit must be an integer from 1 to 10000"):
        await chancy.list_jobs(limit=0)
    with pytest.raises(ConfigurationError, match="since must be timezone-aware"):
        await chancy.list_jobs(since=datetime.now())
    with pytest.raises(ConfigurationError, match=r"invalid queue name|queue"):
        await chancy.list_jobs(queue="bad name!")


@pytest.mark.slow
def test_list_jobs_pages_are_index_driven_with_a_million_rows(database):
    """EXPLAIN shows every kind of page read along an index, never a scan of the table,
    and a page takes milliseconds with 1,000,000 rows (mostly finished)."""
    with Chancy(database) as chancy, psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            chancy.schema.compose(
                """
                INSERT INTO {jobs} (id, queue, func, state, attempts, created_at)
                SELECT gen_random_uuid(), 'q' || (i % 20),
                       CASE WHEN i % 1000 = 0 THEN 'app.rare' ELSE 'app.common' END,
                       CASE WHEN i % 100 = 0 THEN 'failed'
                            WHEN i % 50 = 0 THEN 'pending' ELSE 'succeeded' END,
                       1, now() - make_interval(secs => i)
                FROM generate_series(1, 1000000) AS i
                """
            )
        )
        conn.execute(chancy.schema.compose("VACUUM ANALYZE {jobs}"))
        last = chancy.sync_list_jobs(limit=1).jobs[0].id
        # (filter, whether the page must be read in index order, most milliseconds: None
        # where reading along the index costs about what a scan would, ~0.8 s measured)
        cases = {
            "no filter": (JobFilter(), True, 500),
            "state": (JobFilter(states=["failed"]), True, 500),
            "states": (JobFilter(states=["failed", "pending"]), True, 500),
            "queue": (JobFilter(queue="q7"), True, 500),
            "queue and state": (JobFilter(queue="q7", states=["failed"]), True, 500),
            # A rare function (0.1% of rows) among failed jobs: the planner may read the
            # (queue, state) ranges by bitmap and sort them; still no table scan.
            "state and func": (JobFilter(states=["failed"], func="app.rare"), False, None),
        }
        for what, (flt, ordered, most_ms) in cases.items():
            for cursor in (None, last):
                statement, params = list_jobs_statement(chancy.schema, flt, limit=51, cursor=cursor)
                rows = conn.execute(
                    b"EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params
                ).fetchall()
                plan = json.dumps(rows[0][0])
                assert "Seq Scan" not in plan, (what, plan)
                assert "Index" in plan, (what, plan)
                if ordered:
                    assert "Bitmap Heap Scan" not in plan, (what, plan)
                took = rows[0][0][0]["Execution Time"]
                assert most_ms is None or took < most_ms, (what, took)
        started = time.monotonic()
        page = chancy.sync_list_jobs(state="failed", queue="q0", limit=50)
        assert len(page.jobs) == 50 and all(j.state.value == "failed" for j in page.jobs)
        second = chancy.sync_list_jobs(state="failed", queue="q0", cursor=page.next_cursor)
        assert second.jobs[0].id < page.jobs[-1].id
        assert time.monotonic() - started < 2


# --- reading queues and workers ----------------------------------------------------------------


@pytest.mark.anyio
async def test_queue_stats_counts_each_state_and_shows_undeclared_queues(chancy):
    await chancy.declare(Queue("a", concurrency=2))
    await chancy.declare(Queue("empty"))
    a = await push_many(chancy, "a", 5)
    await set_state(chancy, a[:2], "failed")
    await push_many(chancy, "orphan", 1)
    stats = {st.name: st for st in await chancy.queue_stats()}
    assert set(stats) == {"a", "empty", "orphan"}
    assert stats["a"].counts == {
        "pending": 3,
        "running": 0,
        "succeeded": 0,
        "failed": 2,
        "retrying": 0,
    }
    assert stats["a"].queue == Queue("a", concurrency=2)
    assert stats["a"].oldest_pending_at is not None
    assert stats["a"].oldest_pending_age is not None and 0 <= stats["a"].oldest_pending_age < 60
    assert stats["empty"].counts["pending"] == 0 and stats["empty"].oldest_pending_at is None
    assert stats["orphan"].queue is None and stats["orphan"].counts["pending"] == 1


@pytest.mark.anyio
async def test_list_workers_shows_a_live_worker_with_its_running_job(chancy, run_worker):
    with anyio.fail_after(15):
        await chancy.declare(Queue("q", polling_interval=0.1))
        async with run_worker(chancy, worker_id="w-live") as worker:
            ref = await chancy.push(s.make_job(s.sleeper, "q", seconds=30))
            await s.wait_state(chancy, ref, "running")
            (info,) = await chancy.list_workers()
            assert info.worker_id == worker.worker_id == "w-live"
            assert info.alive and 0 <= info.heartbeat_age < 30
            assert info.running == [ref.identifier]
            # A running job cannot be deleted or retried; it can be cancelled.
            with pytest.raises(JobStateError, match=r"it is running.*cancel it first"):
                await chancy.delete_job(ref)
            with pytest.raises(JobStateError, match=r"cannot retry job .*: it is running"):
                await chancy.retry_job(ref)
            assert await chancy.cancel_jobs(queue="q") == 1
            await s.wait_state(chancy, ref, "failed")
        await s.query(
            chancy,
            "INSERT INTO {workers} (worker_id, hostname, pid, tags, queues, last_seen)"
            " VALUES ('w-dead', 'h', 1, '{{}}', '{{}}', now() - interval '5 minutes')",
        )
        (dead,) = await chancy.list_workers()
        assert dead.worker_id == "w-dead" and not dead.alive and dead.heartbeat_age >= 299


# --- acting on one job -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_retry_job_runs_a_failed_job_again_and_keeps_its_errors(chancy, run_worker):
    with anyio.fail_after(15):
        await chancy.declare(Queue("q", polling_interval=0.1))
        async with run_worker(chancy):
            ref = await chancy.push(s.make_job(s.fail, "q", message="boom"))
            first = await chancy.wait_for_job(ref, timeout=10)
            assert first.state is QueuedJob.State.FAILED and first.max_attempts == 1
            retried = await chancy.retry_job(ref)
            assert retried.state is QueuedJob.State.PENDING
            assert retried.max_attempts == 2 and retried.attempts == 1
            assert len(retried.errors) == 1
            again = await chancy.wait_for_job(ref, timeout=10)
    assert again.state is QueuedJob.State.FAILED and again.attempts == 2
    assert [e["attempt"] for e in again.errors] == [1, 2]


@pytest.mark.anyio
async def test_single_job_actions_refuse_the_wrong_state_and_unknown_jobs(chancy):
    (pending,) = await push_many(chancy, "q", 1)
    with pytest.raises(JobStateError, match=r"cannot retry job .*: it is pending, and only"):
        await chancy.retry_job(pending)
    (done,) = await push_many(chancy, "q", 1)
    await set_state(chancy, [done], "succeeded")
    for action in (
        chancy.requeue_job(done),
        chancy.set_job_priority(done, 5),
        chancy.reschedule_job(done, datetime.now(UTC)),
    ):
        with pytest.raises(JobStateError, match="it is succeeded, and only a job that is pending"):
            await action
    missing = "01900000-0000-7000-8000-000000000000"
    for call in (chancy.retry_job, chancy.requeue_job, chancy.delete_job):
        with pytest.raises(JobNotFoundError, match="does not exist"):
            await call(missing)
    with pytest.raises(JobNotFoundError, match="is not a job reference"):
        await chancy.delete_job("nope")
    with pytest.raises(ConfigurationError, match="priority must be a 32-bit integer"):
        await chancy.set_job_priority(pending, 2**40)
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        await chancy.reschedule_job(pending, datetime.now())


@pytest.mark.anyio
async def test_requeue_reprioritise_reschedule_and_delete_a_waiting_job(chancy):
    (ref,) = await push_many(chancy, "q", 1)
    later = datetime.now(UTC) + timedelta(hours=1)
    job = await chancy.reschedule_job(ref, later)
    assert abs((job.scheduled_at - later).total_seconds()) < 0.001
    job = await chancy.set_job_priority(ref, 7)
    assert job.priority == 7
    job = await chancy.requeue_job(ref, queue="other")
    assert job.queue == "other" and job.scheduled_at <= datetime.now(UTC)
    assert job.state is QueuedJob.State.PENDING
    assert await chancy.delete_job(ref) is True
    assert await chancy.get_job(ref) is None


@pytest.mark.anyio
async def test_retry_job_refuses_while_another_job_holds_its_unique_key(chancy):
    first = await chancy.push(s.make_job(s.noop, "q").with_unique_key("k"))
    await set_state(chancy, [first.identifier], "failed")
    await chancy.push(s.make_job(s.noop, "q").with_unique_key("k"))
    with pytest.raises(JobStateError, match="unique_key 'k' is held by job"):
        await chancy.retry_job(first)
    assert await chancy.retry_jobs(queue="q") == 0  # skipped in bulk too


# --- bulk actions ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_bulk_retry_cancel_and_delete_act_on_the_filter(chancy):
    a = await push_many(chancy, "a", 5)
    b = await push_many(chancy, "b", 3)
    await set_state(chancy, a[:3], "failed")
    await set_state(chancy, b[:1], "failed")
    await set_state(chancy, a[3:4], "succeeded")
    assert await chancy.retry_jobs(queue="a") == 3  # failed ones only, by default
    assert await chancy.retry_jobs(queue="a", state="succeeded") == 1
    assert await chancy.count_jobs() == {
        ("a", QueuedJob.State.PENDING): 5,
        ("b", QueuedJob.State.PENDING): 2,
    }
    assert await chancy.cancel_jobs(queue="b") == 2
    assert await chancy.cancel_jobs(queue="b") == 0
    with pytest.raises(ConfigurationError, match="delete_jobs\\(\\) needs a filter"):
        await chancy.delete_jobs()
    with pytest.raises(ConfigurationError, match="names neither"):
        await chancy.retry_jobs(state="pending")
    assert await chancy.delete_jobs(queue="b", state="failed") == 3
    assert (await chancy.list_jobs(queue="b")).jobs == []
    assert await chancy.delete_jobs(func="test_worker_support.sync_add") == 5


@pytest.mark.anyio
async def test_wait_for_jobs_returns_every_job_once_finished(chancy, run_worker):
    with anyio.fail_after(15):
        await chancy.declare(Queue("q", polling_interval=0.1))
        refs = await chancy.push_many([s.make_job(s.sync_add, "q", a=i, b=1) for i in range(3)])
        with pytest.raises(TimeoutError):
            await chancy.wait_for_jobs(refs, timeout=0.3)
        async with run_worker(chancy):
            done = await chancy.wait_for_jobs(refs, timeout=10)
    assert [j.id for j in done] == [r.identifier for r in refs]
    assert all(j.state is QueuedJob.State.SUCCEEDED for j in done)


# --- queues ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_queue_paused_until_a_time_resumes_by_itself(chancy, run_worker):
    """No worker change and no one acting: the queue reads as active once resume_at passes."""
    with anyio.fail_after(20):
        await chancy.declare(Queue("q", polling_interval=0.1))
        resume_at = datetime.now(UTC) + timedelta(seconds=6)  # generous: a loaded machine
        assert await chancy.pause_queue("q", resume_at=resume_at) is True
        (stats,) = await chancy.queue_stats()
        assert stats.queue is not None and stats.queue.state is Queue.State.PAUSED
        assert stats.resume_at == resume_at
        async with run_worker(chancy):
            ref = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1))
            await anyio.sleep(1.0)
            assert (await chancy.get_job(ref)).state is QueuedJob.State.PENDING  # type: ignore[union-attr]
            done = await chancy.wait_for_job(ref, timeout=10)
        assert done.state is QueuedJob.State.SUCCEEDED
        assert done.started_at is not None and done.started_at >= resume_at - timedelta(seconds=0.5)
        queue = await chancy.get_queue("q")
        assert queue is not None and queue.state is Queue.State.ACTIVE


@pytest.mark.anyio
async def test_pause_without_resume_at_stays_paused_and_resume_clears_it(chancy):
    await chancy.declare(Queue("q"))
    await chancy.pause_queue("q", resume_at=datetime.now(UTC) + timedelta(hours=1))
    assert await chancy.pause_queue("q") is True  # a plain pause drops the resume time
    (stats,) = await chancy.queue_stats()
    assert stats.resume_at is None and stats.queue.state is Queue.State.PAUSED  # type: ignore[union-attr]
    assert await chancy.resume_queue("q") is True
    assert (await chancy.get_queue("q")).state is Queue.State.ACTIVE  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="has passed"):
        await chancy.pause_queue("q", resume_at=datetime.now(UTC) - timedelta(seconds=1))


@pytest.mark.anyio
async def test_delete_queue_refuses_while_jobs_remain_unless_purged(chancy):
    await chancy.declare(Queue("q"))
    refs = await push_many(chancy, "q", 2)
    await set_state(chancy, refs[:1], "succeeded")
    with pytest.raises(JobStateError, match=r"still has 1 pending job.*purge_jobs=True"):
        await chancy.delete_queue("q")
    assert await chancy.get_queue("q") is not None
    assert await chancy.delete_queue("q", purge_jobs=True) is True
    assert await chancy.get_queue("q") is None
    assert await chancy.get_job(refs[1]) is None  # the waiting job went with it
    assert await chancy.get_job(refs[0]) is not None  # finished history stays
    assert await chancy.delete_queue("q") is False


@pytest.mark.anyio
async def test_update_queue_changes_only_what_is_given(chancy):
    await chancy.declare(
        Queue(
            "q", concurrency=4, executor="thread", rate_limit=5, rate_limit_window=60, tags={"gpu"}
        )
    )
    await chancy.pause_queue("q")
    updated = await chancy.update_queue("q", concurrency=8)
    assert updated == Queue(
        "q",
        concurrency=8,
        executor="thread",
        rate_limit=5,
        rate_limit_window=60,
        tags={"gpu"},
        state=Queue.State.PAUSED,
    )
    assert await chancy.get_queue("q") == updated
    with pytest.raises(ConfigurationError, match="cannot change state, tagz"):
        await chancy.update_queue("q", state="active", tagz=["x"])
    with pytest.raises(QueueNotFoundError, match="queue 'nope' is not declared"):
        await chancy.update_queue("nope", concurrency=2)
    with pytest.raises(Exception, match="concurrency must be an integer"):
        await chancy.update_queue("q", concurrency=0)


# --- the sync twins --------------------------------------------------------------------------


def test_sync_twins_do_what_the_async_methods_do(database):
    with Chancy(database) as chancy:
        chancy.sync_declare(Queue("q"))
        ref = chancy.sync_push(s.make_job(s.noop, "q"))
        assert [j.id for j in chancy.sync_list_jobs(queue="q").jobs] == [ref.identifier]
        assert chancy.sync_set_job_priority(ref, 3).priority == 3
        assert chancy.sync_requeue_job(ref).state is QueuedJob.State.PENDING
        assert chancy.sync_reschedule_job(ref, datetime.now(UTC)).queue == "q"
        assert chancy.sync_cancel_job(ref) is True
        assert chancy.sync_retry_job(ref).state is QueuedJob.State.PENDING
        assert chancy.sync_cancel_jobs(queue="q") == 1
        assert chancy.sync_retry_jobs(queue="q") == 1
        assert chancy.sync_queue_stats()[0].counts["pending"] == 1
        assert chancy.sync_list_workers() == []
        assert chancy.sync_pause_queue("q") and chancy.sync_resume_queue("q")
        assert chancy.sync_update_queue("q", concurrency=2).concurrency == 2
        with pytest.raises(JobStateError):
            chancy.sync_delete_queue("q")
        assert chancy.sync_delete_job(ref) is True
        assert chancy.sync_delete_jobs(queue="q") == 0
        assert chancy.sync_delete_queue("q") is True
        with pytest.raises(TimeoutError):
            chancy.sync_wait_for_jobs([chancy.sync_push(s.make_job(s.noop, "q"))], timeout=0.2)


# --- guard rails on push ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_push_to_an_undeclared_queue_fails_clearly_and_pushes_nothing(chancy):
    chancy.require_declared_queues = True  # the default (tests/conftest.py turns it off)
    with pytest.raises(QueueNotFoundError, match=r"queue 'nowhere' is not declared.*declare it"):
        await chancy.push_many([s.make_job(s.noop, "nowhere"), s.make_job(s.noop, "nowhere")])
    assert (await chancy.list_jobs()).jobs == []
    await chancy.declare(Queue("nowhere"))
    assert await chancy.push(s.make_job(s.noop, "nowhere"))
    # Deleting the queue forgets it: pushing to it fails again.
    assert await chancy.delete_queue("nowhere", purge_jobs=True)
    with pytest.raises(QueueNotFoundError):
        await chancy.push(s.make_job(s.noop, "nowhere"))


@pytest.mark.anyio
async def test_a_bulk_push_by_copy_checks_queues_and_kwargs_too(chancy, database):
    """From COPY_MIN_JOBS jobs a push is one COPY: the same guard rails hold, and a refused
    push leaves nothing, async and sync."""
    chancy.require_declared_queues = True
    many = [s.make_job(s.noop, "nowhere") for _ in range(COPY_MIN_JOBS)]
    with pytest.raises(QueueNotFoundError, match="'nowhere' is not declared"):
        await chancy.push_many(many)
    with Chancy(database) as twin:
        twin.require_declared_queues = True
        with pytest.raises(QueueNotFoundError):
            twin.sync_push_many(many)
    await chancy.declare(Queue("nowhere"))
    bad = [*many[:-1], Job.from_func(s.sync_add, queue="nowhere", kwargs={"a": 1})]
    with pytest.raises(InvalidJobError, match="missing 'b'"):
        await chancy.push_many(bad)
    assert (await chancy.list_jobs()).jobs == []
    assert len(await chancy.push_many(many)) == COPY_MIN_JOBS


def test_sync_push_in_a_transaction_to_an_undeclared_queue_fails(database):
    with Chancy(database) as chancy, psycopg.connect(database) as conn:
        chancy.require_declared_queues = True
        with pytest.raises(QueueNotFoundError, match="'elsewhere' is not declared"):
            chancy.sync_push_many_ex(conn, [s.make_job(s.noop, "elsewhere")])


@pytest.mark.anyio
async def test_push_checks_kwargs_against_a_known_function(chancy):
    with pytest.raises(InvalidJobError, match=r"sync_add\(a: 'int', b: 'int'\).*missing 'b'"):
        await chancy.push(s.make_job(s.sync_add, "q", a=1))
    with pytest.raises(InvalidJobError, match="unexpected 'too'"):
        await chancy.push(s.make_job(s.sync_add, "q", a=1, b=2, too=3))
    # job_context is given by the worker, not by the pusher; defaults may be left out.
    assert await chancy.push(s.make_job(s.fail_until, "q", attempt=2))
    # A function push cannot see (module not imported) is not checked: the worker is.
    assert await chancy.push(Job(func="not_imported_module.anything", kwargs={"x": 1}))
    assert (await chancy.list_jobs()).jobs[0].func == "not_imported_module.anything"


@pytest.mark.anyio
async def test_bulk_actions_on_hundreds_of_jobs_notify_in_small_payloads(chancy):
    """A NOTIFY payload must stay under 8000 bytes: ids go 100 to a notification."""
    listener = await chancy.connect()
    await listener.execute(f'LISTEN "{chancy.schema.channel}"')
    await push_many(chancy, "q", 450)
    assert await chancy.cancel_jobs(queue="q") == 450
    assert await chancy.retry_jobs(queue="q") == 450
    assert await chancy.delete_jobs(queue="q") == 450
    notes = [json.loads(n.payload) async for n in listener.notifies(timeout=0.5)]
    await listener.close()
    done = [n for n in notes if n["e"] == "done"]
    assert sum(len(n["ids"]) for n in done) == 900  # cancelled, then deleted
    assert max(len(n["ids"]) for n in done) <= 100
