"""Limits: TIME stops the job in every executor, MEMORY kills the process executor's child."""

from __future__ import annotations

import os
import time

import anyio
import pytest
import test_worker_support as s

from chancy_core import Limit, Queue

pytestmark = [pytest.mark.anyio, pytest.mark.db]

TIME_LIMIT = [Limit(Limit.Type.TIME, 1)]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_time_limit_cancels_an_async_job(chancy, run_worker):
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", executor="async", polling_interval=0.1))
        async with run_worker(chancy):
            began = time.monotonic()
            ref = await chancy.push(s.make_job(s.sleeper, "q", seconds=30).with_limits(TIME_LIMIT))
            job = await s.wait_state(chancy, ref, "failed", timeout=5)
            took = time.monotonic() - began
    assert 0.9 < took < 3
    assert job.attempts == 1
    assert s.raised(job).startswith("chancy_core.errors.TimeLimitExceeded: job")
    assert "time limit of 1s" in s.raised(job)


async def test_time_limit_frees_the_thread_slot_at_the_deadline(chancy, run_worker):
    s.GATE.clear()
    try:
        with anyio.fail_after(10):
            await chancy.declare(Queue("q", executor="thread", concurrency=1, polling_interval=0.1))
            async with run_worker(chancy):
                slow = await chancy.push(
                    s.make_job(s.gated, "q", seconds=30).with_limits(TIME_LIMIT)
                )
                await s.wait_state(chancy, slow, "running")
                began = time.monotonic()
                quick = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1))
                await s.wait_state(chancy, quick, "succeeded", timeout=5)
                waited = time.monotonic() - began
                job = await chancy.get_job(slow)
    finally:
        s.GATE.set()  # let the abandoned thread end
    assert job is not None and job.state.value == "failed"
    assert s.raised(job).startswith("chancy_core.errors.TimeLimitExceeded: job")
    # The one slot was freed at the deadline, although the thread itself ran on.
    assert 0.5 < waited < 3


async def test_time_limit_kills_the_process(chancy, run_worker, tmp_path):
    pidfile = tmp_path / "pid"
    with anyio.fail_after(15):
        await chancy.declare(Queue("q", executor="process", polling_interval=0.1))
        async with run_worker(chancy):
            # Warm the child up first: importing the job's module on a loaded machine can
            # take longer than the 1 s limit, which would stop the job before it wrote.
            warm = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1))
            await s.wait_state(chancy, warm, "succeeded", timeout=10)
            ref = await chancy.push(
                s.make_job(s.pid_then_sleep, "q", path=str(pidfile), seconds=30).with_limits(
                    TIME_LIMIT
                )
            )
            job = await s.wait_state(chancy, ref, "failed", timeout=10)
            pid = int(pidfile.read_text())
            await s.wait_until(lambda: _gone(pid), timeout=2, what="the child to be gone")
            # The pool replaces the child.
            ok = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1))
            await s.wait_state(chancy, ok, "succeeded", timeout=10)
    assert s.raised(job).startswith("chancy_core.errors.TimeLimitExceeded: job")


async def test_memory_limit_kills_the_process(chancy, run_worker):
    with anyio.fail_after(20):
        await chancy.declare(Queue("q", executor="process", polling_interval=0.1))
        async with run_worker(chancy):
            ref = await chancy.push(
                s.make_job(s.hog, "q", megabytes=300, hold=5).with_limits(
                    [Limit(Limit.Type.MEMORY, 100 * 2**20)]
                )
            )
            job = await s.wait_state(chancy, ref, "failed", timeout=15)
            small = await chancy.push(
                s.make_job(s.hog, "q", megabytes=10, hold=0).with_limits(
                    [Limit(Limit.Type.MEMORY, 100 * 2**20)]
                )
            )
            await s.wait_state(chancy, small, "succeeded", timeout=10)
    assert s.raised(job).startswith("chancy_core.errors.MemoryLimitExceeded: job")
    assert "memory limit of 104857600 bytes (100 MiB)" in s.raised(job)
