"""A worker killed mid-job: the leader's recovery puts the job back and it runs once more."""

from __future__ import annotations

import itertools
import os
import signal
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from chancy_plugin_recovery import KEY, Recovery
from recovery_helpers import CREATE_EXECUTIONS, tracked

from chancy_core import Chancy, Job, Queue, QueuedJob, Worker

pytestmark = [pytest.mark.anyio, pytest.mark.db]

HERE = Path(__file__).parent


async def wait_until(probe: Any, what: str, every: float = 0.05) -> Any:
    """Call ``await probe()`` until it returns something truthy (the caller sets the deadline)."""
    while True:
        found = await probe()
        if found:
            return found
        await anyio.sleep(every)


async def test_job_of_a_killed_worker_runs_again_and_never_twice_at_once(
    database: str, tmp_path: Path
) -> None:
    recovery = Recovery(interval=0.2, worker_timeout=1.0, grace=0.5)
    log = (tmp_path / "worker.log").open("wb")
    process: anyio.abc.Process | None = None
    with anyio.fail_after(9.5):
        async with Chancy(database, autoload_plugins=False, plugins=[recovery]) as app:
            await app.migrate()
            await app.declare(Queue("default", concurrency=2, polling_interval=0.1))
            conn = await psycopg.AsyncConnection.connect(database, autocommit=True)
            async with conn:
                await conn.execute(CREATE_EXECUTIONS)
                ref = await app.push(
                    Job.from_func(tracked, kwargs={"dsn": database, "first": 60.0, "then": 0.3})
                )
                doomed = f"doomed-{uuid.uuid4().hex[:8]}"
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
                process = await anyio.open_process(
                    [sys.executable, "-m", "recovery_helpers", database, doomed],
                    env=env,
                    stdout=log,
                    stderr=log,
                )
                try:

                    async def started() -> Any:
                        cur = await conn.execute("SELECT count(*) FROM recovery_test_executions")
                        return (await cur.fetchone() or (0,))[0]

                    await wait_until(started, "the doomed worker to start the job")
                    async with Worker(
                        app, heartbeat_interval=0.2, shutdown_timeout=2.0
                    ) as survivor:
                        assert (await app.get_job(ref)).state is QueuedJob.State.RUNNING  # type: ignore[union-attr]
                        process.send_signal(signal.SIGKILL)
                        await process.wait()
                        cur = await conn.execute("SELECT clock_timestamp()")
                        killed_at: datetime = (await cur.fetchone() or (None,))[0]
                        done = await app.wait_for_job(ref, interval=0.1)
                        assert survivor.is_leader
                finally:
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
                    log.close()
                cur = await conn.execute(
                    "SELECT pid, attempt, started_at, finished_at FROM recovery_test_executions"
                    " ORDER BY started_at"
                )
                executions = await cur.fetchall()

    output = (tmp_path / "worker.log").read_text(errors="replace")
    assert done.state is QueuedJob.State.SUCCEEDED, (done.errors, output)
    assert done.meta[KEY]["rescues"] == 1
    assert done.meta[KEY]["last_reason"] == "silent"
    assert done.meta[KEY]["last_worker"] == doomed
    assert done.attempts == 2  # a rescued attempt counts: attempt numbers only grow
    assert len(done.errors) == 1 and "stopped sending heartbeats" in done.errors[0]["traceback"]

    assert [(pid, attempt) for pid, attempt, _, _ in executions] == [
        (process.pid, 1),
        (os.getpid(), 2),
    ], output
    # No two executions overlapped: the killed one ended at the latest when it was killed.
    spans = [(start, end or killed_at) for _, _, start, end in executions]
    assert executions[0][3] is None and spans[0][0] < killed_at
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start
