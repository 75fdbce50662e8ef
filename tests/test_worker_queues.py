"""Queues change under a running worker: declared, changed, paused, resumed, deleted,
re-tagged. The worker notices (at once by notification, else within the polling
interval) without a restart."""

from __future__ import annotations

import anyio
import pytest
import test_worker_support as s

from chancy_core import Queue

pytestmark = [pytest.mark.anyio, pytest.mark.db]


async def test_queue_declared_at_run_time_is_served(chancy, run_worker):
    with anyio.fail_after(10):
        async with run_worker(chancy) as worker:
            assert worker.queues == {}
            await chancy.declare(Queue("late", polling_interval=0.1))
            await s.wait_until(lambda: "late" in worker.queues, timeout=1, what="queue served")
            ref = await chancy.push(s.make_job(s.sync_add, "late", a=1, b=1))
            await s.wait_state(chancy, ref, "succeeded")


async def test_changes_made_without_notification_are_polled(chancy, run_worker):
    """A change written straight to the table (no NOTIFY) is seen within a second."""
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", concurrency=1, polling_interval=0.1))
        async with run_worker(chancy) as worker:
            await s.wait_until(lambda: "q" in worker.queues)
            await s.query(chancy, "UPDATE {queues} SET concurrency = 3, state = 'paused'")
            await s.wait_until(
                lambda: (
                    worker.queues["q"].queue.concurrency == 3
                    and worker.queues["q"].queue.state is Queue.State.PAUSED
                ),
                timeout=1.5,
                what="the change to be seen",
            )
            await s.query(chancy, "DELETE FROM {queues}")
            await s.wait_until(lambda: "q" not in worker.queues, timeout=1.5, what="deletion")


@pytest.mark.parametrize("executor", ["async", "thread"])
async def test_concurrency_change_applies_at_once(chancy, run_worker, executor):
    func = s.counted if executor == "async" else s.counted_sync
    with anyio.fail_after(15):
        await chancy.declare(Queue("q", executor=executor, concurrency=2, polling_interval=5))
        async with run_worker(chancy) as worker:
            s.GAUGE.reset()
            refs = await chancy.push_many([s.make_job(func, "q", seconds=0.15)] * 6)
            await s.wait_all(chancy, refs, "succeeded")
            assert s.GAUGE.max == 2
            await chancy.declare(Queue("q", executor=executor, concurrency=4, polling_interval=5))
            await s.wait_until(lambda: worker.queues["q"].queue.concurrency == 4, timeout=1)
            s.GAUGE.reset()
            refs = await chancy.push_many([s.make_job(func, "q", seconds=0.15)] * 8)
            await s.wait_all(chancy, refs, "succeeded")
            assert s.GAUGE.max == 4


async def test_pause_and_resume(chancy, run_worker):
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", polling_interval=0.1))
        async with run_worker(chancy) as worker:
            assert await chancy.pause_queue("q")
            await s.wait_until(lambda: worker.queues["q"].queue.state is Queue.State.PAUSED)
            ref = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1))
            await anyio.sleep(0.5)
            job = await chancy.get_job(ref)
            assert job is not None and job.state.value == "pending"
            assert await chancy.resume_queue("q")
            await s.wait_state(chancy, ref, "succeeded", timeout=2)


async def test_deleted_queue_stops_being_served_and_its_running_job_finishes(chancy, run_worker):
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", polling_interval=0.1))
        async with run_worker(chancy) as worker:
            running = await chancy.push(s.make_job(s.sleeper, "q", seconds=0.5))
            await s.wait_state(chancy, running, "running")
            assert await chancy.delete_queue("q", keep_jobs=True)
            await s.wait_until(lambda: "q" not in worker.queues, timeout=1)
            # The job that was running finishes and its outcome is written.
            await s.wait_state(chancy, running, "succeeded", timeout=3)
            ref = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1))
            await anyio.sleep(0.4)
            job = await chancy.get_job(ref)
            assert job is not None and job.state.value == "pending"
            # Declared again: served again.
            await chancy.declare(Queue("q", polling_interval=0.1))
            await s.wait_state(chancy, ref, "succeeded", timeout=2)


async def test_shutdown_waits_for_jobs_of_a_deleted_queue(chancy, run_worker):
    """A job of a queue deleted meanwhile is still a running job of the worker's: a
    shutdown drains it (or puts it back), never leaves it `running`."""
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", polling_interval=0.1))
        async with run_worker(chancy, shutdown_timeout=0.2) as worker:
            ref = await chancy.push(s.make_job(s.sleeper, "q", seconds=30))
            await s.wait_state(chancy, ref, "running")
            await chancy.delete_queue("q", keep_jobs=True)
            await s.wait_until(lambda: "q" not in worker.queues, timeout=1)
            assert [j.id for j in worker.running_jobs] == [str(ref)]
    row = await s.job_row(chancy, ref)
    assert row["state"] == "pending" and row["attempts"] == 0 and row["taken_by"] is None


async def test_executor_change_keeps_concurrency_across_old_and_new_loop(chancy, run_worker):
    """Changing a queue's executor retires its loop; the job still running on the old
    executor counts against the queue's concurrency until it ends."""
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", executor="async", concurrency=1, polling_interval=0.1))
        async with run_worker(chancy) as worker:
            old = await chancy.push(s.make_job(s.sleeper, "q", seconds=2))
            await s.wait_state(chancy, old, "running")
            await chancy.declare(Queue("q", executor="thread", concurrency=1, polling_interval=0.1))
            await s.wait_until(lambda: worker.queues["q"].queue.executor == "thread", timeout=1)
            new = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1))
            await anyio.sleep(0.3)
            job = await chancy.get_job(new)
            assert job is not None and job.state.value == "pending"  # the one slot is taken
            first = await s.wait_state(chancy, old, "succeeded", timeout=3)
            second = await s.wait_state(chancy, new, "succeeded", timeout=3)
    assert first.completed_at is not None and second.started_at is not None
    assert (second.started_at - first.started_at).total_seconds() >= 2  # after it ended


async def test_tags_select_which_worker_serves_a_queue(chancy, run_worker):
    with anyio.fail_after(10):
        await chancy.declare(Queue("gpu", tags={"gpu*"}, polling_interval=0.1))
        await chancy.declare(Queue("any", polling_interval=0.1))
        async with run_worker(chancy, tags={"cpu"}) as cpu:
            assert set(cpu.queues) == {"any"}
            ref = await chancy.push(s.make_job(s.sync_add, "gpu", a=1, b=1))
            await anyio.sleep(0.4)
            job = await chancy.get_job(ref)
            assert job is not None and job.state.value == "pending"
            async with run_worker(chancy, tags={"gpu-a100"}) as gpu:
                assert set(gpu.queues) == {"any", "gpu"}
                await s.wait_state(chancy, ref, "succeeded")
            # Re-tagged at run time: now every worker matches.
            await chancy.declare(Queue("gpu", tags={"*"}, polling_interval=0.1))
            await s.wait_until(lambda: "gpu" in cpu.queues, timeout=1)
            # A worker's own id is one of its tags.
            await chancy.declare(
                Queue("mine", tags={f"worker:{cpu.worker_id}"}, polling_interval=0.1)
            )
            await s.wait_until(lambda: "mine" in cpu.queues, timeout=1)
