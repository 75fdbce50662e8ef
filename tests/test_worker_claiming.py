"""Claiming: concurrency bounds, priority then age, scheduled jobs, rate limits."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import anyio
import pytest
import test_worker_support as s

from chancy_core import Queue

pytestmark = [pytest.mark.anyio, pytest.mark.db]


@pytest.mark.parametrize("executor", ["async", "thread"])
async def test_never_more_running_than_concurrency(chancy, run_worker, executor):
    func = s.counted if executor == "async" else s.counted_sync
    s.GAUGE.reset()
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", executor=executor, concurrency=3, polling_interval=0.1))
        async with run_worker(chancy):
            refs = await chancy.push_many([s.make_job(func, "q", seconds=0.05)] * 30)
            await s.wait_all(chancy, refs, "succeeded")
    assert s.GAUGE.max == 3


async def test_concurrency_is_per_worker(chancy, run_worker):
    """Two workers with concurrency 2 each: at most 4 at once, and each at most 2."""
    s.GAUGE.reset()
    per_worker: Counter[str] = Counter()
    most: Counter[str] = Counter()
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", concurrency=2, polling_interval=0.1))
        async with run_worker(chancy) as a, run_worker(chancy) as b:

            async def watch() -> None:
                while True:
                    for w in (a, b):
                        per_worker[w.worker_id] = len(w.running_jobs)
                        most[w.worker_id] = max(most[w.worker_id], per_worker[w.worker_id])
                    await anyio.sleep(0.005)

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                refs = await chancy.push_many([s.make_job(s.counted, "q", seconds=0.1)] * 20)
                await s.wait_all(chancy, refs, "succeeded")
                tg.cancel_scope.cancel()
    assert s.GAUGE.max <= 4
    assert set(most.values()) == {2}


async def test_priority_first_then_age(chancy, run_worker):
    s.ORDER.clear()
    plan = [("a", 0), ("b", 5), ("c", 0), ("d", 10), ("e", 5), ("f", -1)]
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", concurrency=1, polling_interval=0.1))
        for tag, priority in plan:  # one push each: ids (age) in this order
            await chancy.push(s.make_job(s.record, "q", tag=tag).with_priority(priority))
        async with run_worker(chancy):
            await s.wait_until(lambda: len(s.ORDER) == len(plan))
    assert s.ORDER == ["d", "b", "e", "a", "c", "f"]


async def test_priority_within_one_claim(chancy, run_worker):
    """Jobs claimed together also start in priority order."""
    s.ORDER.clear()
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", concurrency=10, polling_interval=0.1))
        await chancy.push_many(
            [s.make_job(s.record, "q", tag=str(p)).with_priority(p) for p in (1, 3, 2, 5, 4)]
        )
        async with run_worker(chancy):
            await s.wait_until(lambda: len(s.ORDER) == 5)
    assert s.ORDER == ["5", "4", "3", "2", "1"]


async def test_scheduled_job_waits_until_due(chancy, run_worker):
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", polling_interval=0.1))
        async with run_worker(chancy):
            due = datetime.now(UTC) + timedelta(seconds=1.5)
            later = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1).with_scheduled_at(due))
            now = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1))
            await s.wait_state(chancy, now, "succeeded")
            # Polled every 0.1 s, it is still pending until it is due.
            await anyio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() - 0.3))
            job = await chancy.get_job(later)
            assert job is not None and job.state.value == "pending"
            job = await s.wait_state(chancy, later, "succeeded", timeout=3)
    assert job.started_at is not None and job.started_at >= due


async def test_rate_limit_holds_across_two_workers(chancy, run_worker):
    """3 starts per 1 s window, two workers with room for 5 each: never more than 3 of
    the jobs' claims (their started_at, on the database's clock) fall in one window."""
    with anyio.fail_after(15):
        await chancy.declare(
            Queue(
                "q",
                concurrency=5,
                polling_interval=0.05,
                rate_limit=3,
                rate_limit_window=1,
            )
        )
        async with run_worker(chancy) as a, run_worker(chancy) as b:
            refs = await chancy.push_many([s.make_job(s.noop, "q")] * 9)
            jobs = await s.wait_all(chancy, refs, "succeeded", timeout=8)
            assert set(a.queues) == set(b.queues) == {"q"}
    windows = Counter(int(j.started_at.timestamp()) for j in jobs if j.started_at)
    assert sum(windows.values()) == 9
    assert max(windows.values()) <= 3
    assert len(windows) >= 3
