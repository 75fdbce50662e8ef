"""Completion: outcomes written in batches, fenced, with errors per attempt; retries."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import anyio
import pytest
import test_worker_support as s

from chancy_core import Queue

pytestmark = [pytest.mark.anyio, pytest.mark.db]


async def test_outcomes_are_written_in_batches(chancy, run_worker):
    with anyio.fail_after(15):
        await chancy.declare(Queue("q", concurrency=50, polling_interval=0.1))
        async with run_worker(chancy, completion_delay=0.02) as worker:
            writes: list[int] = []
            original = worker._completer._write_batch

            async def spy(batch):
                writes.append(len(batch))
                return await original(batch)

            worker._completer._write_batch = spy
            refs = await chancy.push_many([s.make_job(s.noop, "q")] * 200)
            await s.wait_all(chancy, refs, "succeeded", timeout=10)
    assert sum(writes) == 200
    assert len(writes) <= 200 / 5, writes


async def test_a_worker_cannot_overwrite_a_job_claimed_again_elsewhere(chancy, run_worker):
    """While the job runs, the row is taken over (as recovery then another worker would
    do): the worker's outcome must not touch it."""
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", polling_interval=0.1))
        async with run_worker(chancy) as worker:
            taken = await chancy.push(s.make_job(s.sleeper, "q", seconds=0.5))
            await s.wait_state(chancy, taken, "running")
            await s.query(
                chancy,
                "UPDATE {jobs} SET taken_by = 'someone-else', attempts = attempts + 1"
                " WHERE id = %s",
                (uuid.UUID(str(taken)),),
            )
            # Reset to pending (recovery) with the same worker id but a later attempt.
            reset = await chancy.push(s.make_job(s.async_fail, "q", message="x"))
            await s.wait_state(chancy, reset, "running", "failed")
            await s.query(
                chancy,
                "UPDATE {jobs} SET state = 'pending', taken_by = NULL,"
                " scheduled_at = now() + interval '1 hour' WHERE id = %s",
                (uuid.UUID(str(reset)),),
            )
            await s.wait_until(lambda: not worker.running_jobs, timeout=3)
            await anyio.sleep(0.2)  # past the completion delay: the write happened
            assert not len(worker._completer)
    row = await s.job_row(chancy, taken)
    assert row["state"] == "running" and row["taken_by"] == "someone-else"
    assert row["attempts"] == 2 and row["errors"] == [] and row["completed_at"] is None
    row = await s.job_row(chancy, reset)
    # If the failure was written before the reset, the reset overwrote it: that is fine.
    assert row["state"] == "pending"


async def test_errors_are_kept_per_attempt_and_retried_at_once(chancy, run_worker):
    """max_attempts=3 without any plugin: three attempts back to back (well within the
    10 s polling interval, so nothing waits for a poll), each error recorded."""
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", polling_interval=10))
        async with run_worker(chancy):
            began = time.monotonic()
            ref = await chancy.push(s.make_job(s.fail, "q", message="boom").with_max_attempts(3))
            job = await s.wait_state(chancy, ref, "failed", timeout=5)
            took = time.monotonic() - began
    assert took < 2
    assert job.attempts == 3
    assert [e["attempt"] for e in job.errors] == [1, 2, 3]
    assert all("ValueError: boom" in e["traceback"] for e in job.errors)
    assert all("Traceback (most recent call last)" in e["traceback"] for e in job.errors)
    assert job.completed_at is not None


async def test_success_after_a_retry(chancy, run_worker):
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", executor="thread", polling_interval=10))
        async with run_worker(chancy):
            ref = await chancy.push(s.make_job(s.fail_until, "q", attempt=2).with_max_attempts(5))
            job = await s.wait_state(chancy, ref, "succeeded", timeout=5)
    assert job.attempts == 2
    assert len(job.errors) == 1 and "attempt 1 fails" in job.errors[0]["traceback"]


async def test_errors_postgres_cannot_store_do_not_break_the_worker(chancy, run_worker):
    """A NUL character or a lone surrogate in an error message is stored escaped."""
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", concurrency=3, polling_interval=0.1))
        async with run_worker(chancy) as worker:
            refs = await chancy.push_many(
                [
                    s.make_job(s.fail_unstorable, "q", kind="nul"),
                    s.make_job(s.fail_unstorable, "q", kind="surrogate"),
                    s.make_job(s.sync_add, "q", a=1, b=1),
                ]
            )
            jobs = await s.wait_all(chancy, refs, "failed", "succeeded")
            assert not worker._stopped.is_set()
    assert "nul\\x00here" in jobs[0].errors[0]["traceback"]
    assert "lone \\ud800 surrogate" in jobs[1].errors[0]["traceback"]
    assert jobs[2].state.value == "succeeded"


async def test_a_claim_whose_answer_was_lost_is_put_back(chancy, run_worker):
    """The database says this worker runs a job it never heard of (the claim committed
    as the connection died): the heartbeat puts it back, and it runs."""
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", polling_interval=0.1))
        async with run_worker(chancy, heartbeat_interval=0.2) as worker:
            ref = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1).with_max_attempts(1))
            await s.wait_state(chancy, ref, "succeeded")
            orphan = await s.insert_row(
                chancy,
                queue="q",
                func="test_worker_support.sync_add",
                kwargs=json.dumps({"a": 2, "b": 2}),
                state="running",
                attempts=1,
                taken_by=worker.worker_id,
                started_at=datetime.now(UTC) - timedelta(minutes=5),
            )
            # A job it does run is left alone however long it has been running.
            s.RUNS.clear()
            running = await chancy.push(s.make_job(s.counted_run, "q", tag="r", seconds=1.5))
            await s.wait_state(chancy, running, "running")
            await s.query(
                chancy,
                "UPDATE {jobs} SET started_at = now() - interval '5 minutes' WHERE id = %s",
                (uuid.UUID(str(running)),),
            )
            job = await s.wait_state(chancy, orphan, "succeeded", timeout=5)
            other = await s.wait_state(chancy, running, "succeeded", timeout=5)
    assert job.attempts == 1  # the lost claim's attempt was given back
    assert other.attempts == 1 and s.RUNS == {"r": 1}
