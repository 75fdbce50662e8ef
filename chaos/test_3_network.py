"""3. Network faults: the workers' connections killed with ``pg_terminate_backend``.

* Every connection of two workers (pool and listener) is terminated every 0.3-1 s while
  jobs stream in: every job still succeeds, exactly once.
* Only the listener's connection is terminated, again and again, on a queue whose
  polling interval (60 s) cannot hide a lost wake-up: each job pushed meanwhile still
  starts within a few seconds (the listener reconnects and re-checks every queue). Every
  other round pushes as soon as the old listener is gone, so that the push notifies
  nobody; a round counts as "missed wake-up" when no backend of the worker LISTENs just
  after the push committed, and at least one round must.
"""

from __future__ import annotations

import random
import time

import anyio
import psycopg
import pytest

from chancy_core import Chancy, Job, Queue
from chaos import harness as h

pytestmark = [pytest.mark.anyio, pytest.mark.db, pytest.mark.slow]

TERMINATE_WORKERS = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE 'chaos\\_worker\\_%%'
"""

TERMINATE_LISTENER = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = %s AND query LIKE 'LISTEN%%'
"""

LISTENERS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = %s AND query LIKE 'LISTEN%%'
"""


async def test_work_goes_on_while_worker_connections_are_killed(
    database, mode, report, fleet, tmp_path
):
    rng = random.Random(3)
    total = mode.pick(4_000, 1_000)
    period = mode.pick(30.0, 12.0)
    name = "3. network"
    queues = [Queue("n_async", concurrency=12, polling_interval=0.5)]
    queues.append(Queue("n_thread", concurrency=4, executor="thread", polling_interval=0.5))
    jobs = [
        Job(
            func="chaos.jobs.tracked" if i % 4 else "chaos.jobs.tracked_sync",
            queue="n_async" if i % 4 else "n_thread",
            kwargs={"seconds": round(rng.uniform(0.02, 0.2), 3)},
        )
        for i in range(total)
    ]
    async with Chancy(database, autoload_plugins=False, max_connections=2) as app:
        for queue in queues:
            await app.declare(queue)
        workers = [
            h.WorkerProcess(
                h.worker_config(
                    database,
                    f"n{i}",
                    heartbeat_interval=0.5,
                    shutdown_timeout=10.0,
                    recovery={"interval": 1.0, "worker_timeout": 10.0},
                ),
                tmp_path,
            )
            for i in range(2)
        ]
        fleet.extend(workers)
        await h.wait_registered(database, [w.worker_id for w in workers])
        terminated = rounds = 0

        async def push() -> None:
            batches = max(1, int(period * 0.9 / 0.25))
            size = -(-total // batches)
            for start in range(0, total, size):
                await app.push_many(jobs[start : start + size])
                await anyio.sleep(0.25)

        began = time.monotonic()
        with anyio.fail_after(period + 120):
            async with anyio.create_task_group() as tg:
                tg.start_soon(push)
                while time.monotonic() - began < period:
                    await anyio.sleep(rng.uniform(0.3, 1.0))
                    terminated += await h.scalar(database, TERMINATE_WORKERS)
                    rounds += 1
            await h.wait_until(
                lambda: h.states(database),
                lambda found: found.get("succeeded", 0) + found.get("failed", 0) == total,
                120,
                "every job to finish",
                every=0.5,
            )
        alive = [w.alive() for w in workers]
        codes = await h.stop_workers(workers)

    result = await h.analyze(database)
    report.add(name, "all connections killed: rounds / backends", f"{rounds} / {terminated}")
    report.add(name, "final states", result.states, result.states == {"succeeded": total})
    report.add(name, "jobs run more than once", result.rerun_jobs, result.rerun_jobs == 0)
    report.add(name, "overlapping executions", len(result.overlaps), not result.overlaps)
    report.add(name, "workers alive / exit codes", f"{sum(alive)} / {codes}", all(alive))
    logs = "\n".join(w.tail(2000) for w in workers)
    assert terminated > rounds, "the workers' connections were never found to kill"
    assert not result.problems(), (result.problems(), logs)
    assert result.rerun_jobs == 0, logs
    assert all(alive) and all(c == 0 for c in codes), logs


async def test_wake_ups_keep_coming_while_the_listener_is_killed(
    database, mode, report, fleet, tmp_path
):
    rng = random.Random(4)
    rounds = mode.pick(30, 10)
    name = "3. network"
    app_name = "chaos_worker_listen"
    async with Chancy(database, autoload_plugins=False, max_connections=2) as app:
        await app.declare(Queue("n_wake", concurrency=4, polling_interval=60.0))
        worker = h.WorkerProcess(
            h.worker_config(database, "listen", heartbeat_interval=0.5, shutdown_timeout=5.0),
            tmp_path,
        )
        fleet.append(worker)
        await h.wait_registered(database, [worker.worker_id])
        killed = 0
        latencies: list[float] = []
        missed: list[bool] = []  # per round: whether the push found no listener
        observer = await psycopg.AsyncConnection.connect(database, autocommit=True)

        async def listening() -> int:
            cur = await observer.execute(LISTENERS, (app_name,))
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        async with observer:
            with anyio.fail_after(rounds * 12 + 30):
                for n in range(rounds):
                    await h.wait_until(listening, lambda c: c == 1, 10, "the listener", every=0.02)
                    killed += await h.scalar(database, TERMINATE_LISTENER, (app_name,))
                    if n % 2 == 0:  # at once: the old listener gone, the new one not yet there
                        await h.wait_until(listening, lambda c: c == 0, 10, "no listener", 0.002)
                    else:
                        await anyio.sleep(rng.uniform(0.0, 0.5))  # before or after it reconnects
                    (ref,) = await app.push_many_ex(
                        observer,
                        [Job(func="chaos.jobs.tracked", queue="n_wake", kwargs={"seconds": 0.01})],
                    )
                    # No LISTEN right after the commit: the NOTIFY reached nobody, and only the
                    # reconnect's wake-up of every queue can start the job before the 60 s poll.
                    missed.append(await listening() == 0)
                    job = await app.wait_for_job(ref, timeout=30, interval=0.5)
                    latency = await h.scalar(
                        database,
                        "SELECT extract(epoch FROM min(x.started_at) - j.created_at)::float8"
                        " FROM chancy_jobs AS j JOIN chaos_executions AS x ON x.job_id = j.id"
                        " WHERE j.id = %s GROUP BY j.created_at",
                        (job.id,),
                    )
                    latencies.append(latency)
        alive = worker.alive()
        worker.terminate()
        code = await worker.wait(20)

    report.add(name, "listener killed: times", killed, killed == rounds)
    report.add(name, "rounds pushed while no listener (missed wake-up)", sum(missed), any(missed))
    report.add(name, "push-to-start after a listener kill, p50 (s)", h.percentile(latencies, 50))
    worst = max(latencies)
    report.add(name, "push-to-start after a listener kill, max (s)", worst, worst < 5.0)
    worst_missed = max((x for x, m in zip(latencies, missed, strict=True) if m), default=0.0)
    report.add(name, "push-to-start after a missed wake-up, max (s)", worst_missed)
    assert killed == rounds
    assert any(missed), ("no round pushed while the listener was away", missed)
    assert worst < 5.0, (latencies, missed, worker.tail())
    assert alive and code == 0, worker.tail()
