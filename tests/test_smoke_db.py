"""A first end-to-end check: push, run, read back."""

import pytest

from chancy_core import Job, Queue

pytestmark = [pytest.mark.anyio, pytest.mark.db]


async def double(x: int) -> int:
    return 2 * x


async def test_pushed_job_runs_and_succeeds(chancy, run_worker):
    await chancy.declare(Queue("default", concurrency=2))
    async with run_worker(chancy):
        ref = await chancy.push(Job.from_func(double, kwargs={"x": 2}))
        job = await chancy.wait_for_job(ref, timeout=10)
    assert job.state is job.State.SUCCEEDED
    assert job.attempts == 1
