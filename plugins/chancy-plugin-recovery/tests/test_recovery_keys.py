"""A SIGKILLed worker holding a concurrency key's only slot: the key stays blocked until
recovery puts the job back, then its jobs run again one at a time."""

from __future__ import annotations

import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from chancy_plugin_recovery import Recovery
from recovery_helpers import CREATE_EXECUTIONS, tracked

from chancy_core import Chancy, Job, Queue, QueuedJob, Worker, concurrency
from chancy_core.concurrency import KeyRule, with_key

pytestmark = [pytest.mark.anyio, pytest.mark.db]

HERE = Path(__file__).parent


async def test_a_killed_workers_key_slot_frees_when_recovery_puts_the_job_back(
    database: str, tmp_path: Path
) -> None:
    recovery = Recovery(interval=0.2, worker_timeout=1.0, grace=0.5)
    log = (tmp_path / "worker.log").open("wb")
    process: anyio.abc.Process | None = None
    with anyio.fail_after(30):
        async with Chancy(database, autoload_plugins=False, plugins=[recovery]) as app:
            await app.declare(Queue("default", concurrency=2, polling_interval=0.1))
            await concurrency.set_rule(app, KeyRule("default", "customer:*", max_running=1))
            conn = await psycopg.AsyncConnection.connect(
                database, autocommit=True, prepare_threshold=None
            )
            async with conn:
                await conn.execute(CREATE_EXECUTIONS)
                kwargs = {"dsn": database, "first": 60.0, "then": 0.3}
                first = await app.push(
                    with_key(Job.from_func(tracked, kwargs=kwargs), "customer:1")
                )
                kwargs = {"dsn": database, "first": 0.2, "then": 0.2}
                second = await app.push(
                    with_key(Job.from_func(tracked, kwargs=kwargs), "customer:1")
                )
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
                process = await anyio.open_process(
                    [sys.executable, "-m", "recovery_helpers", database, "doomed-keys"],
                    env=env,
                    stdout=log,
                    stderr=log,
                )
                try:
                    while True:
                        cur = await conn.execute("SELECT count(*) FROM recovery_test_executions")
                        if (await cur.fetchone()) == (1,):
                            break
                        await anyio.sleep(0.05)
                    async with Worker(app, heartbeat_interval=0.2, shutdown_timeout=2.0):
                        await anyio.sleep(
                            1.0
                        )  # the survivor could run `second`, but the key is held
                        assert (await app.get_job(second)).state is QueuedJob.State.PENDING  # type: ignore[union-attr]
                        process.send_signal(signal.SIGKILL)
                        await process.wait()
                        cur = await conn.execute("SELECT clock_timestamp()")
                        killed_at: datetime = (await cur.fetchone() or (None,))[0]
                        done_first = await app.wait_for_job(first, interval=0.1)
                        done_second = await app.wait_for_job(second, interval=0.1)
                finally:
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
                    log.close()
                cur = await conn.execute(
                    "SELECT job_id, attempt, started_at, finished_at"
                    " FROM recovery_test_executions ORDER BY started_at"
                )
                executions: list[Any] = await cur.fetchall()

    output = (tmp_path / "worker.log").read_text(errors="replace")
    assert done_first.state is QueuedJob.State.SUCCEEDED, (done_first.errors, output)
    assert done_second.state is QueuedJob.State.SUCCEEDED, done_second.errors
    # The first job's killed attempt, its rescued attempt, then the second job: never two
    # at once, and the second only after the first was put back and finished.
    assert [(str(j), a) for j, a, _, _ in executions] == [
        (str(first), 1),
        (str(first), 2),
        (str(second), 1),
    ]
    assert executions[0][3] is None and executions[1][2] > killed_at
    assert executions[1][3] is not None and executions[1][3] <= executions[2][2]
