"""2. Database restart: PostgreSQL stopped (fast, then immediate shutdown) and started
again under load. Workers, pushers and ``wait_for_job`` callers (async and sync) survive;
no job is lost or run twice.

The test owns its server (initdb into a temporary folder, its own port and socket): the
shared one is never touched. Jobs are pushed with a unique key each, so that a pusher
that retries a push whose answer was lost does not push the job twice.
"""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

import anyio
import pytest

from chancy_core import Chancy, Job, Queue, QueuedJob
from chancy_core.errors import DatabaseUnavailableError
from chaos import harness as h
from chaos.conftest import migrate

pytestmark = [pytest.mark.anyio, pytest.mark.db, pytest.mark.slow]

WORKERS = 4
OUTAGE = 2.0  # seconds the server stays down
QUEUES = [
    (Queue("r_async", concurrency=12, polling_interval=0.5), "chaos.jobs.tracked"),
    (
        Queue("r_thread", concurrency=4, executor="thread", polling_interval=0.5),
        "chaos.jobs.tracked_sync",
    ),
]


async def test_workers_and_waiters_survive_database_restarts(mode, report, fleet, tmp_path):
    rng = random.Random(2)
    total = mode.pick(6_000, 1_500)
    period = mode.pick(40.0, 20.0)
    name = "2. db restart"
    with h.own_server() as server:
        dsn = h.create_database(server)
        await migrate(dsn)
        jobs = [
            Job(
                func=func,
                queue=queue.name,
                kwargs={"seconds": round(rng.uniform(0.02, 0.3), 3)},
                unique_key=f"r{i}",
            )
            for i, (queue, func) in enumerate(rng.choices(QUEUES, weights=[4, 1], k=total))
        ]
        # Long jobs that are running when the server stops, each awaited by a caller.
        awaited = [
            Job(func="chaos.jobs.tracked", queue="r_async", kwargs={"seconds": 0.4 * period})
            for _ in range(8)
        ]
        async with Chancy(dsn, autoload_plugins=False, max_connections=4, connect_timeout=2) as app:
            for queue, _ in QUEUES:
                await app.declare(queue)
            workers = [
                h.WorkerProcess(
                    h.worker_config(
                        dsn,
                        f"r{i}",
                        heartbeat_interval=1.0,
                        shutdown_timeout=10.0,
                        connect_timeout=2.0,
                        recovery={"interval": 1.0, "worker_timeout": 15.0},
                    ),
                    tmp_path,
                )
                for i in range(WORKERS)
            ]
            fleet.extend(workers)
            await h.wait_registered(dsn, [w.worker_id for w in workers])
            refs = await app.push_many(awaited)

            failed_pushes: dict[str, int] = {}
            waited: list[Any] = []
            restarts: list[dict[str, Any]] = []

            async def push() -> None:
                batches = max(1, int(period * 0.9 / 0.25))
                size = -(-total // batches)
                for start in range(0, total, size):
                    while True:  # an application retries a push while the database is away
                        try:
                            await app.push_many(jobs[start : start + size])
                            break
                        except DatabaseUnavailableError as exc:  # promise 5: nothing else
                            kind = type(exc).__name__
                            failed_pushes[kind] = failed_pushes.get(kind, 0) + 1
                            await anyio.sleep(0.2)
                    await anyio.sleep(0.25)

            async def wait_async(ref: Any) -> None:
                waited.append(await app.wait_for_job(ref, timeout=period + 90, interval=0.5))

            def wait_sync(ref: Any) -> None:
                waited.append(app.sync_wait_for_job(ref, timeout=period + 90, interval=0.5))

            async def succeeded() -> int:
                return int(
                    await h.scalar(
                        dsn, "SELECT count(*) FROM chancy_jobs WHERE state = 'succeeded'"
                    )
                )

            async def restart(stop_mode: str) -> None:
                before = await succeeded()
                stopping = time.monotonic()
                await anyio.to_thread.run_sync(server.stop, stop_mode)
                down = time.monotonic()
                await anyio.sleep(OUTAGE)
                await anyio.to_thread.run_sync(server.start)
                up = time.monotonic()
                # How long until jobs complete again (the workers reconnect on their own).
                await h.wait_until(
                    succeeded, lambda n: n > before, 60, "a job to complete", every=0.05
                )
                restarts.append(
                    {
                        "mode": stop_mode,
                        "stop": down - stopping,
                        "down": up - down,
                        "resumed": time.monotonic() - up,
                        "alive": sum(w.alive() for w in workers),
                    }
                )

            stalls: dict[str, float] = {}  # worker -> its longest heartbeat gap seen (s)

            async def watch_heartbeats() -> None:
                """Note each worker's longest heartbeat gap; the first time one passes 5 s
                (a stall, or a worker that hangs), dump its threads and tasks into its log."""
                while True:
                    await anyio.sleep(1.0)
                    try:
                        found = await h.rows(
                            dsn,
                            "SELECT worker_id, extract(epoch FROM now() - last_seen)::float8"
                            " FROM chancy_workers",
                        )
                    except Exception:
                        continue  # the server is down: no gap can be measured
                    for worker_id, gap in found:
                        if gap > 5.0 and worker_id not in stalls:
                            for w in workers:
                                if w.worker_id == worker_id and w.alive():
                                    os.kill(w.pid, signal.SIGUSR1)
                                    os.kill(w.pid, signal.SIGUSR2)
                        stalls[worker_id] = max(stalls.get(worker_id, 0.0), gap)

            began = time.monotonic()
            with anyio.fail_after(period + 150):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(push)
                    watcher = anyio.CancelScope()

                    async def watch() -> None:
                        with watcher:
                            await watch_heartbeats()

                    tg.start_soon(watch)
                    for ref in refs[:5]:
                        tg.start_soon(wait_async, ref)
                    for ref in refs[5:]:
                        tg.start_soon(anyio.to_thread.run_sync, wait_sync, ref)
                    await anyio.sleep(0.25 * period)
                    await restart("fast")
                    await anyio.sleep(max(0.0, 0.6 * period - (time.monotonic() - began)))
                    await restart("immediate")
                    await anyio.sleep(3.0)  # heartbeats resume after the second restart
                    watcher.cancel()
                await h.wait_until(
                    lambda: h.states(dsn),
                    lambda found: (
                        found.get("succeeded", 0) + found.get("failed", 0) >= len(refs) + total
                    ),
                    120,
                    "every job to finish",
                    every=0.5,
                )
            alive = [w.alive() for w in workers]
            codes = await h.stop_workers(workers)

        result = await h.analyze(dsn)
        duplicates = await h.scalar(
            dsn,
            "SELECT count(*) FROM (SELECT unique_key FROM chancy_jobs WHERE unique_key IS NOT NULL"
            " GROUP BY unique_key HAVING count(*) > 1) AS d",
        )
        h.drop_database(server, dsn)

    for r in restarts:
        report.add(
            name,
            f"{r['mode']} shutdown: stop / down / jobs complete again (s)",
            f"{r['stop']:.2f} / {r['down']:.2f} / {r['resumed']:.2f}",
            r["alive"] == WORKERS,
        )
    worst_gap = max(stalls.values(), default=0.0)
    report.add(
        name,
        "longest heartbeat gap (s; outages included)",
        worst_gap,
        worst_gap < 15.0,  # the recovery plugin's worker_timeout here
    )
    report.add(name, "jobs (+ long jobs awaited)", f"{total} (+{len(refs)})")
    report.add(name, "pushes refused while down (retried)", failed_pushes or 0)
    report.add(name, "duplicate jobs from retried pushes", duplicates, duplicates == 0)
    ok_waits = sum(j.state is QueuedJob.State.SUCCEEDED for j in waited)
    report.add(
        name, "wait_for_job callers (5 async, 3 sync) returned", ok_waits, ok_waits == len(refs)
    )
    report.add(name, "final states", result.states, set(result.states) == {"succeeded"})
    report.add(name, "jobs run more than once", result.rerun_jobs, result.rerun_jobs == 0)
    report.add(name, "overlapping executions", len(result.overlaps), not result.overlaps)
    report.add(name, "workers alive at the end", sum(alive), all(alive))
    report.add(name, "workers exit 0 on SIGTERM", codes, all(c == 0 for c in codes))

    logs = "\n".join(w.tail(2000) for w in workers)
    assert len(restarts) == 2 and all(r["alive"] == WORKERS for r in restarts), logs
    assert worst_gap < 15.0, (stalls, logs)  # the recovery plugin's worker_timeout here
    assert failed_pushes, "no push met the outage: the refusal path never ran"
    assert ok_waits == len(refs)
    assert not result.problems(), (result.problems(), logs)
    assert result.rerun_jobs == 0, logs
    assert duplicates == 0
    assert all(alive) and all(c == 0 for c in codes), logs
