"""5. Shutdown under load: SIGTERM a worker process with jobs of every executor in flight.

Jobs short enough finish; the others are stopped at the shutdown timeout and go back to
``pending`` (their attempt not consumed); none stays ``running``; the process exits 0
within the timeout plus a little. A second SIGTERM stops running jobs at once. A new
worker then runs what was put back, and no execution overlaps another.
"""

from __future__ import annotations

import time

import anyio
import pytest

from chancy_core import Chancy, Job, Queue
from chaos import harness as h

pytestmark = [pytest.mark.anyio, pytest.mark.db, pytest.mark.slow]

QUEUES = [
    # queue, function, short jobs, long jobs (short + long = concurrency)
    (Queue("s_async", concurrency=10, polling_interval=0.2), "chaos.jobs.tracked", 5, 5),
    (
        Queue("s_thread", concurrency=5, executor="thread", polling_interval=0.2),
        "chaos.jobs.tracked_sync",
        3,
        2,
    ),
    (
        Queue("s_process", concurrency=3, executor="process", polling_interval=0.2),
        "chaos.jobs.tracked_sync",
        2,
        1,
    ),
]
SHORT = 2.0  # seconds: finishes within the shutdown timeout
LONG = 600.0  # seconds: stopped by the shutdown (0.2 s when it runs again)


def jobs(kind: str) -> list[Job]:
    found = []
    for queue, func, short, long in QUEUES:
        for seconds, count in ((SHORT, short), (LONG, long)):
            found += [
                Job(
                    func=func,
                    queue=queue.name,
                    kwargs={"seconds": seconds, "rerun_seconds": 0.2},
                    unique_key=f"{kind}-{queue.name}-{seconds}-{i}",
                )
                for i in range(count)
            ]
    return found


async def _start_worker(dsn, fleet, tmp_path, worker_id, timeout) -> h.WorkerProcess:
    worker = h.WorkerProcess(
        h.worker_config(dsn, worker_id, heartbeat_interval=0.5, shutdown_timeout=timeout),
        tmp_path,
    )
    fleet.append(worker)
    await h.wait_registered(dsn, [worker.worker_id])
    return worker


async def _all_started(dsn: str, worker_id: str, kind: str, count: int) -> None:
    """Wait until ``count`` jobs of ``kind`` (their unique key's prefix) started on the
    worker."""
    await h.wait_until(
        lambda: h.scalar(
            dsn,
            "SELECT count(DISTINCT x.job_id) FROM chaos_executions AS x"
            " JOIN chancy_jobs AS j ON j.id = x.job_id"
            " WHERE x.worker_id = %s AND j.unique_key LIKE %s",
            (worker_id, f"{kind}-%"),
        ),
        lambda n: n == count,
        60,
        f"{count} jobs to be executing",
        every=0.05,
    )


async def _record_exit(dsn: str, worker: h.WorkerProcess) -> None:
    """The worker's process has exited: nothing of it runs any more (for the analysis)."""
    await h.rows(
        dsn,
        "INSERT INTO chaos_kills (worker_id, pid, killed_at) VALUES (%s, %s, clock_timestamp())",
        (worker.worker_id, worker.pid),
    )


async def test_sigterm_under_load_finishes_or_puts_back_every_job(
    database, mode, report, fleet, tmp_path
):
    name = "5. shutdown"
    timeout = 4.0
    first = jobs("term")
    total = len(first)
    async with Chancy(database, autoload_plugins=False, max_connections=2) as app:
        for queue, _, _, _ in QUEUES:
            await app.declare(queue)
        worker = await _start_worker(database, fleet, tmp_path, "term", timeout)
        with anyio.fail_after(120):
            # Start the process executor's children first, so that every job starts at once.
            warm = [Job(func="chaos.jobs.tracked_sync", queue="s_process", kwargs={"seconds": 0.5})]
            for ref in await app.push_many(warm * 3):
                await app.wait_for_job(ref, timeout=60, interval=0.2)
            await app.push_many(first)
            await _all_started(database, "term", "term", total)
            in_flight = await h.scalar(
                database, "SELECT count(*) FROM chaos_executions WHERE finished_at IS NULL"
            )
            began = time.monotonic()
            worker.terminate()
            code = await worker.wait(timeout + 30)
            took = time.monotonic() - began
            await _record_exit(database, worker)
            after = await h.rows(
                database,
                "SELECT queue, (kwargs->>'seconds')::float8 AS seconds, state, attempts,"
                " taken_by IS NULL FROM chancy_jobs",
            )
            left_running = sum(r[2] == "running" for r in after)
            shorts_done = all(r[2] == "succeeded" for r in after if r[1] == SHORT)
            longs_back = all(
                r[2] == "pending" and r[3] == 0 and r[4] for r in after if r[1] == LONG
            )
            registered = await h.scalar(
                database, "SELECT count(*) FROM chancy_workers WHERE worker_id = 'term'"
            )

            # A second SIGTERM: running jobs are stopped at once, whatever the timeout.
            second = jobs("twice")
            await app.push_many([j for j in second if j.kwargs["seconds"] == LONG])
            twice = await _start_worker(database, fleet, tmp_path, "twice", 60.0)
            longs = sum(j.kwargs["seconds"] == LONG for j in second)
            await _all_started(database, "twice", "twice", longs)
            began = time.monotonic()
            twice.terminate()
            await anyio.sleep(0.3)
            twice.terminate()
            twice_code = await twice.wait(30)
            twice_took = time.monotonic() - began
            await _record_exit(database, twice)
            twice_running = await h.scalar(
                database, "SELECT count(*) FROM chancy_jobs WHERE state = 'running'"
            )

            # A new worker runs what was put back.
            again = await _start_worker(database, fleet, tmp_path, "again", 10.0)
            await h.wait_until(
                lambda: h.states(database),
                lambda found: set(found) == {"succeeded"},
                60,
                "every job to succeed",
            )
            again.terminate()
            again_code = await again.wait(20)
    result = await h.analyze(database)

    report.add(
        name,
        f"SIGTERM with {in_flight} of {total} jobs in flight (async/thread/process): exit code",
        code,
        code == 0,
    )
    report.add(
        name,
        f"... exited after (s; shutdown_timeout {timeout:.0f})",
        took if code is not None else "did not exit",
        code is not None and took < timeout + 5,
    )
    report.add(name, "... short jobs succeeded", shorts_done, shorts_done)
    report.add(name, "... long jobs back to pending, attempt not consumed", longs_back, longs_back)
    report.add(name, "... left running / worker row left", f"{left_running} / {registered}",
               left_running == 0 and registered == 0)  # fmt: skip
    report.add(
        name,
        "second SIGTERM (timeout 60 s): exited after (s), left running",
        f"{twice_took:.2f}, {twice_running}",
        twice_code == 0 and twice_took < 10 and twice_running == 0,
    )
    report.add(name, "re-run by a new worker: final states", result.states,
               set(result.states) == {"succeeded"})  # fmt: skip
    report.add(name, "overlapping executions", len(result.overlaps), not result.overlaps)

    logs = worker.tail() + twice.tail()
    assert code == 0 and took < timeout + 5, logs
    assert shorts_done and longs_back and left_running == 0 and registered == 0, (after, logs)
    assert twice_code == 0 and twice_took < 10 and twice_running == 0, twice.tail()
    assert again_code == 0
    assert not result.problems(), result.problems()
