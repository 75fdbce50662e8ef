"""Cancelling jobs: running ones in each executor, pending ones, and without notifications."""

from __future__ import annotations

import time
import uuid

import anyio
import pytest
import test_worker_support as s

from chancy_core import Queue

pytestmark = [pytest.mark.anyio, pytest.mark.db]


@pytest.mark.parametrize("executor", ["async", "thread", "process"])
async def test_cancel_a_running_job(chancy, run_worker, executor):
    s.GATE.clear()
    func = {"async": s.sleeper, "thread": s.gated, "process": s.sync_sleeper}[executor]
    try:
        with anyio.fail_after(15):
            await chancy.declare(Queue("q", executor=executor, polling_interval=0.1))
            async with run_worker(chancy):
                # max_attempts > 1: a cancelled job is still not retried.
                ref = await chancy.push(s.make_job(func, "q", seconds=30).with_max_attempts(3))
                await s.wait_state(chancy, ref, "running", timeout=10)
                began = time.monotonic()
                assert await chancy.cancel_job(ref)
                job = await s.wait_state(chancy, ref, "failed", timeout=5)
                took = time.monotonic() - began
                ok = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1))
                await s.wait_state(chancy, ok, "succeeded", timeout=10)
    finally:
        s.GATE.set()
    assert took < 2
    assert job.attempts == 1
    assert len(job.errors) == 1
    assert "cancelled" in job.errors[0]["traceback"]
    assert s.raised(job).startswith("chancy_core.errors.JobCancelled: job")
    row = await s.job_row(chancy, ref)
    assert row["taken_by"] is None and row["cancelled_at"] is None


async def test_cancel_a_pending_job(chancy, run_worker):
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", polling_interval=0.1, state=Queue.State.PAUSED))
        async with run_worker(chancy):
            ref = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1).with_max_attempts(3))
            assert await chancy.cancel_job(ref)
            await chancy.resume_queue("q")
            other = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1))
            await s.wait_state(chancy, other, "succeeded")
    job = await chancy.get_job(ref)
    assert job is not None and job.state.value == "failed"
    assert job.attempts == 0 and job.started_at is None
    assert "cancelled" in job.errors[0]["traceback"]


async def test_cancel_without_notification_is_found_by_the_heartbeat(chancy, run_worker):
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", polling_interval=0.1))
        async with run_worker(chancy, heartbeat_interval=0.2):
            ref = await chancy.push(s.make_job(s.sleeper, "q", seconds=30))
            await s.wait_state(chancy, ref, "running")
            # As cancel_job does, but without its NOTIFY (as if the listener missed it).
            await s.query(
                chancy,
                "UPDATE {jobs} SET cancelled_at = now() WHERE id = %s",
                (uuid.UUID(str(ref)),),
            )
            job = await s.wait_state(chancy, ref, "failed", timeout=3)
    assert "cancelled" in job.errors[0]["traceback"]
