"""The app (chancy_core.app): pushing, reading, cancelling, waiting and queue admin.

The Queue model needs no database; everything else runs on a real PostgreSQL
(the ``chancy`` and ``database`` fixtures of chancy_core.testing).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import psycopg
import psycopg.sql
import pytest

from chancy_core import Chancy, Job, Limit, Queue, QueuedJob, Reference, events, job
from chancy_core.app import COPY_MIN_JOBS
from chancy_core.errors import ConfigurationError, InvalidJobError, JobNotFoundError

# --- the Queue model (no database) ----------------------------------------------------------


def test_queue_defaults():
    queue = Queue("default")
    assert queue.concurrency == 1
    assert queue.executor == "async"
    assert queue.executor_options == {}
    assert queue.polling_interval == 1.0
    assert (queue.rate_limit, queue.rate_limit_window) == (None, None)
    assert queue.tags == frozenset({"*"})
    assert queue.state is Queue.State.ACTIVE


def test_queue_options_are_keyword_only_and_the_queue_is_frozen():
    with pytest.raises(TypeError):
        Queue("q", 4)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Queue("q").concurrency = 2  # type: ignore[misc]


def test_queue_normalizes_tags_to_a_frozenset_and_state_from_its_value():
    queue = Queue("q", tags=["gpu", "gpu", "eu-*"], state="paused")  # type: ignore[arg-type]
    assert queue.tags == frozenset({"gpu", "eu-*"})
    assert queue.state is Queue.State.PAUSED


def test_queue_is_served_by_a_worker_whose_tags_match_one_of_its_patterns():
    queue = Queue("q", tags={"gpu-*", "special"})
    assert queue.served_by({"gpu-a100"})
    assert queue.served_by({"cpu", "special"})
    assert not queue.served_by({"cpu"})
    assert not queue.served_by(set())
    assert Queue("any").served_by({"whatever"})


def test_queue_with_state_returns_a_copy_in_that_state():
    queue = Queue("q", concurrency=3)
    paused = queue.with_state(Queue.State.PAUSED)
    assert paused == dataclasses.replace(queue, state=Queue.State.PAUSED)
    assert queue.state is Queue.State.ACTIVE


# --- helpers --------------------------------------------------------------------------------


@job(queue="decorated", priority=4)
def decorated(n: int = 0) -> int:
    return n


async def set_state(chancy: Chancy, ref: Reference, state: str, *, notify: bool = False) -> None:
    """Move a job to ``state`` as a worker would, optionally with the completion notification."""
    async with chancy.pool.connection() as conn, conn.transaction():
        await conn.execute(
            "UPDATE chancy_jobs SET state = %s,"
            " completed_at = CASE WHEN %s IN ('succeeded', 'failed') THEN now() END"
            " WHERE id = %s",
            (state, state, ref.identifier),
        )
        if notify:
            payload = json.dumps({"e": "done", "ids": [ref.identifier]})
            await conn.execute("SELECT pg_notify(%s, %s)", (chancy.schema.channel, payload))


async def count_rows(chancy: Chancy, where: str = "true", *params: Any) -> int:
    async with chancy.pool.connection() as conn:
        cur = await conn.execute(f"SELECT count(*) FROM chancy_jobs WHERE {where}", params)  # noqa: S608
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def a_job(**fields: Any) -> Job:
    return Job(func="tests.jobs.work", **fields)


# --- push and get ---------------------------------------------------------------------------


@pytest.mark.db
@pytest.mark.anyio
async def test_push_then_get_round_trips_every_field(chancy):
    pushed = Job(
        func="pkg.mod.func",
        queue="reports:eu",
        kwargs={"a": [1, 2.5, None, True, "ü😀"], "b": {"c": {}}, "big": 2**70},
        priority=-7,
        max_attempts=4,
        scheduled_at=datetime(2031, 2, 3, 4, 5, 6, 789012, tzinfo=timezone(timedelta(hours=-3))),
        limits=[Limit(Limit.Type.TIME, 30), Limit(Limit.Type.MEMORY, 2**30)],
        unique_key="report-2031-02",
        meta={"plugin": {"n": 1}},
    )
    ref = await chancy.push(pushed)
    got = await chancy.get_job(ref)
    assert isinstance(got, QueuedJob)
    assert got.id == ref
    for field in dataclasses.fields(Job):
        assert getattr(got, field.name) == getattr(pushed, field.name), field.name
    assert got.state is QueuedJob.State.PENDING
    assert (got.attempts, got.errors, got.started_at, got.completed_at) == (0, [], None, None)


@pytest.mark.db
@pytest.mark.anyio
async def test_push_stores_kwargs_none_as_none(chancy):
    got = await chancy.get_job(await chancy.push(a_job(kwargs=None)))
    assert got is not None
    assert got.kwargs is None


@pytest.mark.db
@pytest.mark.anyio
async def test_push_of_a_decorated_function_pushes_its_job(chancy):
    got = await chancy.get_job(await chancy.push(decorated))
    assert got is not None
    assert (got.func, got.queue, got.priority) == (f"{__name__}.decorated", "decorated", 4)


@pytest.mark.db
@pytest.mark.anyio
async def test_get_job_of_an_unknown_reference_is_none(chancy):
    assert await chancy.get_job(Reference(str(uuid.uuid4()))) is None


@pytest.mark.db
@pytest.mark.anyio
async def test_get_job_accepts_the_identifier_string(chancy):
    ref = await chancy.push(a_job())
    got = await chancy.get_job(ref.identifier)
    assert got is not None
    assert got.id == ref


@pytest.mark.db
@pytest.mark.anyio
async def test_get_jobs_keeps_the_order_asked_and_gives_none_for_missing(chancy):
    refs = await chancy.push_many([a_job(kwargs={"i": i}) for i in range(3)])
    missing = Reference(str(uuid.uuid4()))
    got = await chancy.get_jobs([refs[2], missing, refs[0], refs[2]])
    assert [j.kwargs if j else None for j in got] == [{"i": 2}, None, {"i": 0}, {"i": 2}]


@pytest.mark.db
@pytest.mark.anyio
async def test_push_many_returns_references_in_the_order_of_the_jobs(chancy):
    jobs = [a_job(kwargs={"i": i}, queue=f"q{i % 3}") for i in range(25)]
    refs = await chancy.push_many(jobs, batch_size=7)
    assert len(set(refs)) == 25
    got = await chancy.get_jobs(refs)
    assert [(j.kwargs, j.queue) for j in got if j] == [(j.kwargs, j.queue) for j in jobs]


@pytest.mark.db
@pytest.mark.anyio
async def test_push_many_sends_one_insert_statement_per_batch(chancy, monkeypatch):
    statements: list[bytes] = []
    original = psycopg.AsyncCursor.execute

    async def counting(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(query if isinstance(query, bytes) else str(query).encode())
        return await original(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", counting)
    # Unique keys: the INSERT path (many jobs without keys are streamed with COPY).
    jobs = [a_job(kwargs={"i": i}, unique_key=f"k{i}") for i in range(2500)]
    refs = await chancy.push_many(jobs, batch_size=1000)
    monkeypatch.undo()
    assert len(refs) == 2500
    assert sum(b"INSERT INTO" in s for s in statements) == 3
    assert await count_rows(chancy) == 2500


@pytest.mark.db
@pytest.mark.anyio
@pytest.mark.parametrize("sync", [False, True])
async def test_push_many_of_many_jobs_without_keys_copies_them_and_announces_each_queue(
    chancy, database, sync
):
    jobs = [
        a_job(kwargs={"i": i, "s": "ü"}, queue=f"q{i % 2}", meta={"m": i}, priority=i % 5)
        for i in range(COPY_MIN_JOBS)
    ]
    jobs[7] = a_job(kwargs=None, limits=[Limit(Limit.Type.TIME, 3)])
    listener = await chancy.connect()
    try:
        await listener.execute(
            psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(chancy.schema.channel))
        )
        if sync:
            with Chancy(database) as app:
                refs = await anyio.to_thread.run_sync(app.sync_push_many, jobs)
        else:
            refs = await chancy.push_many(jobs, batch_size=100)
        notes = {note.payload async for note in listener.notifies(timeout=0.5)}
    finally:
        await listener.close()
    got = await chancy.get_jobs(refs)
    assert [(j.kwargs, j.meta, j.queue, j.priority, j.limits) for j in got if j] == [
        (j.kwargs, j.meta, j.queue, j.priority, j.limits) for j in jobs
    ]
    assert {
        '{"e":"pushed","q":"q0"}',
        '{"e":"pushed","q":"q1"}',
        '{"e":"pushed","q":"default"}',
    } <= notes


@pytest.mark.db
@pytest.mark.anyio
async def test_push_many_copy_checks_every_job_before_writing_any(chancy):
    jobs = [a_job(kwargs={"i": i}) for i in range(COPY_MIN_JOBS)]
    jobs[-1] = a_job(kwargs={"bad": {1, 2}})
    with pytest.raises(InvalidJobError, match="kwargs"):
        await chancy.push_many(jobs)
    assert await count_rows(chancy) == 0


@pytest.mark.db
@pytest.mark.anyio
async def test_push_many_of_nothing_returns_no_references(chancy):
    assert await chancy.push_many([]) == []


# --- transactional enqueue ------------------------------------------------------------------


@pytest.mark.db
@pytest.mark.anyio
@pytest.mark.parametrize("via", ["connection", "cursor"])
async def test_push_many_ex_in_a_rolled_back_transaction_leaves_nothing(chancy, database, via):
    conn = await psycopg.AsyncConnection.connect(database)
    async with conn, conn.transaction(force_rollback=True):
        target = conn if via == "connection" else conn.cursor()
        refs = await chancy.push_many_ex(target, [a_job(kwargs={"i": i}) for i in range(3)])
        assert len(refs) == 3
    assert await chancy.get_jobs(refs) == [None, None, None]
    assert await count_rows(chancy) == 0


@pytest.mark.db
@pytest.mark.anyio
@pytest.mark.parametrize("via", ["connection", "cursor"])
async def test_push_many_ex_in_a_committed_transaction_keeps_every_job(chancy, database, via):
    async with await psycopg.AsyncConnection.connect(database) as conn, conn.transaction():
        await conn.execute("CREATE TABLE orders (id int)")
        await conn.execute("INSERT INTO orders VALUES (1)")
        target = conn if via == "connection" else conn.cursor()
        refs = await chancy.push_many_ex(target, [a_job(kwargs={"i": i}) for i in range(3)])
    got = await chancy.get_jobs(refs)
    assert [j.kwargs for j in got if j] == [{"i": 0}, {"i": 1}, {"i": 2}]


@pytest.mark.db
@pytest.mark.anyio
async def test_push_many_ex_wakes_listeners_only_when_the_transaction_commits(chancy, database):
    listener = await chancy.connect()
    await listener.execute(f'LISTEN "{chancy.schema.channel}"')

    async def pushed_notes() -> list[str]:
        return [n.payload async for n in listener.notifies(timeout=0.3)]

    async with await psycopg.AsyncConnection.connect(database) as conn:
        async with conn.transaction(force_rollback=True):
            await chancy.push_many_ex(conn, [a_job()])
        assert await pushed_notes() == []
        async with conn.transaction():
            await chancy.push_many_ex(conn, [a_job()])
        notes = await pushed_notes()
    await listener.close()
    assert [json.loads(n) for n in notes] == [{"e": "pushed", "q": "default"}]


@pytest.mark.db
def test_sync_push_many_ex_rolled_back_leaves_nothing_and_committed_keeps_all(database):
    with Chancy(database) as app, psycopg.connect(database) as conn:
        with conn.transaction(force_rollback=True):
            dropped = app.sync_push_many_ex(conn, [a_job(kwargs={"i": i}) for i in range(3)])
        with conn.transaction(), conn.cursor() as cur:
            kept = app.sync_push_many_ex(cur, [a_job(kwargs={"i": i}) for i in range(3)])
        assert [app.sync_get_job(ref) for ref in dropped] == [None, None, None]
        assert [j.kwargs for j in map(app.sync_get_job, kept) if j] == [{"i": i} for i in range(3)]


# --- unique keys ----------------------------------------------------------------------------


@pytest.mark.db
@pytest.mark.anyio
async def test_pushing_a_duplicate_unique_key_returns_the_existing_reference(chancy):
    first = await chancy.push(a_job(unique_key="k", kwargs={"n": 1}))
    second = await chancy.push(a_job(unique_key="k", kwargs={"n": 2}))
    assert second == first
    assert await count_rows(chancy) == 1
    got = await chancy.get_job(first)
    assert got is not None
    assert got.kwargs == {"n": 1}


@pytest.mark.db
@pytest.mark.anyio
async def test_duplicate_unique_keys_within_one_batch_share_one_row(chancy):
    jobs = [a_job(unique_key="a"), a_job(), a_job(unique_key="a"), a_job(unique_key="b")]
    refs = await chancy.push_many(jobs)
    assert refs[0] == refs[2]
    assert len({refs[0], refs[1], refs[3]}) == 3
    assert await count_rows(chancy) == 3


@pytest.mark.db
@pytest.mark.anyio
async def test_twenty_concurrent_pushers_of_one_unique_key_write_exactly_one_row(chancy):
    start = anyio.Event()
    refs: list[Reference] = []

    async def pusher() -> None:
        async with await chancy.connect() as conn:
            await start.wait()
            async with conn.transaction():
                refs.extend(await chancy.push_many_ex(conn, [a_job(unique_key="once")]))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(pusher)
        await anyio.sleep(0.2)  # let every pusher connect, then release them together
        start.set()
    assert len(refs) == 20
    assert len(set(refs)) == 1
    assert await count_rows(chancy, "unique_key = %s", "once") == 1


@pytest.mark.db
@pytest.mark.anyio
@pytest.mark.parametrize("final", ["succeeded", "failed"])
async def test_unique_key_can_be_pushed_again_once_its_job_finished(chancy, final):
    first = await chancy.push(a_job(unique_key="k"))
    await set_state(chancy, first, final)
    second = await chancy.push(a_job(unique_key="k"))
    assert second != first
    assert await count_rows(chancy, "unique_key = %s", "k") == 2


@pytest.mark.db
@pytest.mark.anyio
@pytest.mark.parametrize("unfinished", ["running", "retrying"])
async def test_unique_key_of_a_running_or_retrying_job_still_blocks_a_duplicate(chancy, unfinished):
    first = await chancy.push(a_job(unique_key="k"))
    await set_state(chancy, first, unfinished)
    assert await chancy.push(a_job(unique_key="k")) == first


@pytest.mark.db
@pytest.mark.anyio
async def test_unique_key_is_free_again_after_its_job_is_cancelled(chancy):
    first = await chancy.push(a_job(unique_key="k"))
    assert await chancy.cancel_job(first)
    assert await chancy.push(a_job(unique_key="k")) != first


# --- cancelling -------------------------------------------------------------------------------


@pytest.mark.db
@pytest.mark.anyio
@pytest.mark.parametrize("waiting", ["pending", "retrying"])
async def test_cancel_of_a_waiting_job_fails_it_with_a_cancelled_error(chancy, waiting):
    ref = await chancy.push(a_job())
    await set_state(chancy, ref, waiting)
    assert await chancy.cancel_job(ref) is True
    got = await chancy.get_job(ref)
    assert got is not None
    assert got.state is QueuedJob.State.FAILED
    assert got.completed_at is not None
    assert len(got.errors) == 1
    assert "cancelled" in got.errors[0]["traceback"]
    assert got.errors[0]["attempt"] == got.attempts


@pytest.mark.db
@pytest.mark.anyio
@pytest.mark.parametrize("final", ["succeeded", "failed"])
async def test_cancel_of_a_finished_job_returns_false_and_changes_nothing(chancy, final):
    ref = await chancy.push(a_job())
    await set_state(chancy, ref, final)
    before = await chancy.get_job(ref)
    assert await chancy.cancel_job(ref) is False
    assert await chancy.get_job(ref) == before


@pytest.mark.db
@pytest.mark.anyio
async def test_cancel_of_a_running_job_asks_its_worker_to_stop_it(chancy):
    ref = await chancy.push(a_job())
    await set_state(chancy, ref, "running")
    listener = await chancy.connect()
    await listener.execute(f'LISTEN "{chancy.schema.channel}"')
    assert await chancy.cancel_job(ref) is True
    notes = [json.loads(n.payload) async for n in listener.notifies(timeout=0.3)]
    await listener.close()
    assert notes == [{"e": "cancel", "ids": [ref.identifier]}]
    got = await chancy.get_job(ref)
    assert got is not None
    assert got.state is QueuedJob.State.RUNNING  # the worker fails it when it stops it
    assert await count_rows(chancy, "cancelled_at IS NOT NULL") == 1
    assert await chancy.cancel_job(ref) is False  # asked once already


@pytest.mark.db
@pytest.mark.anyio
async def test_cancel_of_an_unknown_job_returns_false(chancy):
    assert await chancy.cancel_job(Reference(str(uuid.uuid4()))) is False


# --- waiting --------------------------------------------------------------------------------


@pytest.mark.db
@pytest.mark.anyio
async def test_wait_for_job_raises_timeout_error_when_the_job_does_not_finish(chancy):
    ref = await chancy.push(a_job())
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="pending"):
        await chancy.wait_for_job(ref, timeout=0.3, interval=0.1)
    assert 0.25 <= time.monotonic() - started < 2


@pytest.mark.db
@pytest.mark.anyio
async def test_wait_for_job_raises_job_not_found_when_the_job_is_deleted_meanwhile(chancy):
    ref = await chancy.push(a_job())

    async def delete_soon() -> None:
        await anyio.sleep(0.2)
        async with chancy.pool.connection() as conn:
            await conn.execute("DELETE FROM chancy_jobs WHERE id = %s", (ref.identifier,))

    async with anyio.create_task_group() as tg:
        tg.start_soon(delete_soon)
        with pytest.raises(JobNotFoundError, match=ref.identifier):
            await chancy.wait_for_job(ref, timeout=5, interval=0.1)


@pytest.mark.db
@pytest.mark.anyio
async def test_wait_for_job_of_an_unknown_job_raises_job_not_found_at_once(chancy):
    with pytest.raises(JobNotFoundError, match="does not exist"):
        await chancy.wait_for_job(Reference(str(uuid.uuid4())), timeout=5)


@pytest.mark.db
@pytest.mark.anyio
async def test_wait_for_job_returns_a_finished_job_at_once(chancy):
    ref = await chancy.push(a_job())
    await set_state(chancy, ref, "succeeded")
    got = await chancy.wait_for_job(ref, timeout=1)
    assert got.state is QueuedJob.State.SUCCEEDED


@pytest.mark.db
@pytest.mark.anyio
async def test_wait_for_job_is_woken_by_the_completion_notification(chancy):
    ref = await chancy.push(a_job())
    other = await chancy.push(a_job())

    async def complete_soon() -> None:
        await anyio.sleep(0.2)
        await set_state(chancy, other, "succeeded", notify=True)  # not ours: keep waiting
        await anyio.sleep(0.1)
        await set_state(chancy, ref, "failed", notify=True)

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(complete_soon)
        # Polling every 30 s could not return in time: only the notification can.
        got = await chancy.wait_for_job(ref, timeout=5, interval=30)
    assert got.state is QueuedJob.State.FAILED
    assert time.monotonic() - started < 2


# --- the sync twins, from plain sync code -------------------------------------------------------


def complete_later(database: str, ref: Reference, channel: str, delay: float) -> threading.Timer:
    def complete() -> None:
        with psycopg.connect(database, autocommit=True) as conn, conn.transaction():
            conn.execute(
                "UPDATE chancy_jobs SET state = 'succeeded', completed_at = now() WHERE id = %s",
                (ref.identifier,),
            )
            payload = json.dumps({"e": "done", "ids": [ref.identifier]})
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    timer = threading.Timer(delay, complete)
    timer.start()
    return timer


@pytest.mark.db
def test_sync_api_pushes_reads_waits_and_declares_from_plain_sync_code(database):
    with Chancy(database) as app:
        declared = app.sync_declare(Queue("sync-q", concurrency=2, tags={"t"}))
        assert declared == Queue("sync-q", concurrency=2, tags={"t"})
        ref = app.sync_push(a_job(queue="sync-q", kwargs={"n": 1}))
        refs = app.sync_push_many([a_job(kwargs={"i": i}) for i in range(3)], batch_size=2)
        got = app.sync_get_job(ref)
        assert got is not None
        assert (got.queue, got.kwargs, got.state) == ("sync-q", {"n": 1}, QueuedJob.State.PENDING)
        assert [j.kwargs for j in map(app.sync_get_job, refs) if j] == [{"i": i} for i in range(3)]
        with pytest.raises(TimeoutError):
            app.sync_wait_for_job(ref, timeout=0.2, interval=0.1)
        timer = complete_later(database, ref, app.schema.channel, 0.2)
        started = time.monotonic()
        done = app.sync_wait_for_job(ref, timeout=5, interval=30)
        timer.join()
        assert done.state is QueuedJob.State.SUCCEEDED
        assert time.monotonic() - started < 2


def test_every_sync_twin_takes_what_its_async_method_takes_and_says_whose_twin_it_is():
    lifecycle = {"sync_open", "sync_close", "sync_connect"}  # the sync pool's own
    twins = sorted(n for n in dir(Chancy) if n.startswith("sync_") and n not in lifecycle)
    paired = [name for name in twins if hasattr(Chancy, name.removeprefix("sync_"))]
    assert paired == twins and len(paired) >= 24, twins
    for name in paired:
        method = getattr(Chancy, name.removeprefix("sync_"))
        sync = getattr(Chancy, name)
        assert inspect.iscoroutinefunction(method), name
        assert not inspect.iscoroutinefunction(sync), name
        assert sync.__name__ == name
        async_params = list(inspect.signature(method).parameters.values())
        sync_params = list(inspect.signature(sync).parameters.values())
        assert [(p.name, p.kind, p.default) for p in sync_params] == [
            (p.name, p.kind, p.default) for p in async_params
        ], name
        assert sync.__doc__.startswith(f"Sync twin of :meth:`{method.__name__}`"), name
        assert method.__doc__ and not method.__doc__.startswith("Sync twin"), name


@pytest.mark.db
def test_sync_wait_for_job_of_an_unknown_job_raises_job_not_found(database):
    with Chancy(database) as app, pytest.raises(JobNotFoundError):
        app.sync_wait_for_job(str(uuid.uuid4()), timeout=1)


# --- queue admin --------------------------------------------------------------------------------


@pytest.mark.db
@pytest.mark.anyio
async def test_declare_then_get_queue_round_trips_every_field(chancy):
    queue = Queue(
        "reports",
        concurrency=8,
        executor="process",
        executor_options={"max_tasks_per_child": 100, "nested": {"a": [1]}},
        polling_interval=0.25,
        rate_limit=10,
        rate_limit_window=60,
        tags={"gpu-*", "eu"},
        state=Queue.State.PAUSED,
    )
    assert await chancy.declare(queue) == queue
    assert await chancy.get_queue("reports") == queue


@pytest.mark.db
@pytest.mark.anyio
async def test_declaring_an_existing_queue_updates_it(chancy):
    await chancy.declare(Queue("q", concurrency=1, rate_limit=5, rate_limit_window=1))
    updated = Queue("q", concurrency=4, executor="thread")
    await chancy.declare(updated)
    assert await chancy.get_queue("q") == updated
    assert len(await chancy.get_all_queues()) == 1


@pytest.mark.db
@pytest.mark.anyio
async def test_get_all_queues_lists_every_queue_by_name(chancy):
    for name in ["b", "c", "a"]:
        await chancy.declare(Queue(name))
    assert [q.name for q in await chancy.get_all_queues()] == ["a", "b", "c"]


@pytest.mark.db
@pytest.mark.anyio
async def test_get_queue_of_an_undeclared_queue_is_none(chancy):
    assert await chancy.get_queue("nope") is None


@pytest.mark.db
@pytest.mark.anyio
async def test_pause_and_resume_change_the_queue_state(chancy):
    await chancy.declare(Queue("q", concurrency=3))
    assert await chancy.pause_queue("q") is True
    paused = await chancy.get_queue("q")
    assert paused == Queue("q", concurrency=3, state=Queue.State.PAUSED)
    assert await chancy.resume_queue("q") is True
    assert await chancy.get_queue("q") == Queue("q", concurrency=3)


@pytest.mark.db
@pytest.mark.anyio
async def test_pause_resume_and_delete_of_an_undeclared_queue_return_false(chancy):
    assert await chancy.pause_queue("nope") is False
    assert await chancy.resume_queue("nope") is False
    assert await chancy.delete_queue("nope") is False


@pytest.mark.db
@pytest.mark.anyio
async def test_delete_queue_with_keep_jobs_removes_the_declaration_but_keeps_its_jobs(chancy):
    await chancy.declare(Queue("q"))
    ref = await chancy.push(a_job(queue="q"))
    assert await chancy.delete_queue("q", keep_jobs=True) is True
    assert await chancy.get_queue("q") is None
    assert await chancy.get_job(ref) is not None


@pytest.mark.db
@pytest.mark.anyio
async def test_every_queue_change_notifies_listening_workers(chancy):
    listener = await chancy.connect()
    await listener.execute(f'LISTEN "{chancy.schema.channel}"')
    await chancy.declare(Queue("q"))
    await chancy.pause_queue("q")
    await chancy.resume_queue("q")
    await chancy.delete_queue("q")
    notes = [json.loads(n.payload) async for n in listener.notifies(timeout=0.3)]
    await listener.close()
    assert notes == [{"e": "queue", "q": "q"}] * 4


@pytest.mark.db
@pytest.mark.anyio
async def test_wait_for_job_holds_every_waiter_slot_while_it_waits(chancy):
    """Workers announce "done" only when a waiter holds their slot's lock: all of them."""
    ref = await chancy.push(a_job())
    key = events.waiter_lock(chancy.schema.channel) & 0xFFFFFFFF
    held: list[int] = []

    async def count_slots() -> None:
        await anyio.sleep(0.5)
        async with chancy.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND mode = 'ShareLock' AND objsubid = 2 AND classid::bigint = %s"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                (key,),
            )
            row = await cur.fetchone()
        assert row is not None
        held.append(int(row[0]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(count_slots)
        with pytest.raises(TimeoutError):
            await chancy.wait_for_job(ref, timeout=1.5, interval=0.2)
    assert held == [events.WAITER_SLOTS]


def test_push_many_ex_refuses_what_is_not_a_psycopg3_connection_of_its_kind(database):
    """A psycopg2-style DB-API connection (here sqlite3's) or an async connection given to
    the sync API: a clear ConfigurationError, and nothing pushed (new-user trial M9)."""
    import sqlite3

    with Chancy(database) as app:
        other = sqlite3.connect(":memory:")
        with pytest.raises(ConfigurationError, match="needs a psycopg 3 connection"):
            app.sync_push_many_ex(other, [a_job()])
        other.close()

        async def wrong_kind() -> None:
            async with await psycopg.AsyncConnection.connect(database) as conn:
                with pytest.raises(ConfigurationError, match="use push_many_ex"):
                    app.sync_push_many_ex(conn, [a_job()])  # type: ignore[arg-type]

        anyio.run(wrong_kind)
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM chancy_jobs").fetchone() == (0,)
