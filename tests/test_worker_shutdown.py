"""Graceful shutdown: drain, then put back what did not finish; also on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
import test_worker_support as s

from chancy_core import Queue
from chancy_core.worker import Worker

pytestmark = [pytest.mark.anyio, pytest.mark.db]

TESTS = Path(__file__).parent


async def assert_released(chancy, ref) -> None:
    """The job is back to pending, its attempt not consumed, and nothing is left."""
    row = await s.job_row(chancy, ref)
    assert row["state"] == "pending"
    assert row["attempts"] == 0
    assert row["taken_by"] is None and row["started_at"] is None
    assert await s.query(chancy, "SELECT id FROM {jobs} WHERE state = 'running'") == []
    assert await s.query(chancy, "SELECT worker_id FROM {workers}") == []


@pytest.mark.parametrize("executor", ["async", "thread", "process"])
async def test_stop_puts_an_unfinished_job_back_to_pending(chancy, executor):
    s.GATE.clear()
    func = {"async": s.sleeper, "thread": s.gated, "process": s.sync_sleeper}[executor]
    try:
        with anyio.fail_after(15):
            await chancy.declare(Queue("q", executor=executor, polling_interval=0.1))
            async with Worker(chancy, shutdown_timeout=0.3) as worker:
                ref = await chancy.push(s.make_job(func, "q", seconds=30))
                await s.wait_state(chancy, ref, "running", timeout=10)
                with anyio.fail_after(3):
                    await worker.stop()
    finally:
        s.GATE.set()
    await assert_released(chancy, ref)


async def test_stop_lets_a_short_job_finish(chancy):
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", polling_interval=0.1))
        async with Worker(chancy, shutdown_timeout=5) as worker:
            ref = await chancy.push(s.make_job(s.sleeper, "q", seconds=0.5))
            await s.wait_state(chancy, ref, "running")
            await worker.stop()
    job = await chancy.get_job(ref)
    assert job is not None and job.state.value == "succeeded" and job.attempts == 1
    assert await s.query(chancy, "SELECT worker_id FROM {workers}") == []


async def test_stop_writes_outcomes_still_waiting(chancy):
    """Outcomes waiting for their batch are written before the worker exits."""
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", concurrency=10, polling_interval=0.1))
        async with Worker(chancy, completion_delay=1.0, shutdown_timeout=2) as worker:
            refs = await chancy.push_many([s.make_job(s.noop, "q")] * 10)
            await s.wait_until(lambda: len(worker._completer) == 10, what="10 outcomes")
            await worker.stop()
    await s.wait_all(chancy, refs, "succeeded", timeout=0.1)


SCRIPT = """
import asyncio, logging, sys
sys.path.insert(0, {tests!r})
from chancy_core import Chancy
from chancy_core.worker import Worker

logging.basicConfig(level=logging.INFO)

async def main():
    async with Chancy({dsn!r}) as chancy:
        await Worker(chancy, shutdown_timeout={timeout}, heartbeat_interval=0.5).serve()

if __name__ == "__main__":  # the process executor's children import this module too
    asyncio.run(main())
"""


async def _serve_in_subprocess(chancy, database, tmp_path, timeout: float) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(SCRIPT).format(tests=str(TESTS), dsn=database, timeout=timeout)
    )
    env = {**os.environ, "CHANCY_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def _wait_exit(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    output, _ = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=timeout))
    return proc.returncode, output.decode()


def _reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()  # also closes its pipe


@pytest.mark.parametrize(
    ("executor", "signals", "timeout"),
    [("async", 1, 0.5), ("process", 1, 0.5), ("async", 2, 60)],
    ids=["async", "process", "second-signal-stops-at-once"],
)
async def test_sigterm_mid_job_puts_it_back(chancy, database, tmp_path, executor, signals, timeout):
    with anyio.fail_after(25):
        await chancy.declare(Queue("q", executor=executor, polling_interval=0.1))
        ref = await chancy.push(s.make_job(s.sleeper, "q", seconds=30))
        proc = await _serve_in_subprocess(chancy, database, tmp_path, timeout=timeout)
        try:
            await s.wait_state(chancy, ref, "running", timeout=15)
            for _ in range(signals):
                proc.send_signal(signal.SIGTERM)
                await anyio.sleep(0.3)
            code, output = await _wait_exit(proc, 10)
        finally:
            _reap(proc)
        assert code == 0, output
        assert "shutting down" in output
        await assert_released(chancy, ref)


async def test_sigterm_lets_a_short_job_finish(chancy, database, tmp_path):
    with anyio.fail_after(20):
        await chancy.declare(Queue("q", polling_interval=0.1))
        ref = await chancy.push(s.make_job(s.sleeper, "q", seconds=1))
        proc = await _serve_in_subprocess(chancy, database, tmp_path, timeout=10)
        try:
            await s.wait_state(chancy, ref, "running", timeout=15)
            proc.send_signal(signal.SIGTERM)
            code, output = await _wait_exit(proc, 10)
        finally:
            _reap(proc)
        assert code == 0, output
        job = await chancy.get_job(ref)
        assert job is not None and job.state.value == "succeeded"
        assert await s.query(chancy, "SELECT worker_id FROM {workers}") == []
