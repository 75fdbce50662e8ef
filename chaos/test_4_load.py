"""4. Load.

* One worker holds 1,000 jobs in flight across the three executors with a pool of 10
  connections: its connections (``pg_stat_activity``) never pass the pool plus its
  listener.
* 50 concurrent pushers push the same unique keys in different orders and batch sizes:
  one row per key, every pusher gets the same reference for it, no pusher errs.
* A queue with 1,000,000 pending jobs (200,000 in short mode), inserted with one
  ``INSERT ... SELECT generate_series``, keeps claiming in milliseconds: the claim's
  latency is measured with the worker's own statement, its plan shown to use the fetch
  index, and a real worker's throughput on that queue is measured.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import anyio
import psycopg
import pytest

from chancy_core import Chancy, Job, Queue
from chancy_core import sql as q
from chaos import harness as h

pytestmark = [pytest.mark.anyio, pytest.mark.db, pytest.mark.slow]

POOL = 10


async def test_a_thousand_jobs_in_flight_stay_within_the_pool(
    database, mode, report, fleet, tmp_path
):
    name = "4. load"
    seconds = 8.0
    plan = [  # queue, function, jobs
        (Queue("l_async", concurrency=840, polling_interval=0.5), "chaos.jobs.sleep", 840),
        (
            Queue("l_thread", concurrency=150, executor="thread", polling_interval=0.5),
            "chaos.jobs.sleep_sync",
            150,
        ),
        (
            Queue("l_process", concurrency=10, executor="process", polling_interval=0.5),
            "chaos.jobs.sleep_sync",
            10,
        ),
    ]
    total = sum(n for _, _, n in plan)
    app_name = "chaos_worker_load"
    async with Chancy(database, autoload_plugins=False, max_connections=2) as app:
        for queue, _, _ in plan:
            await app.declare(queue)
        await app.push_many(
            [
                Job(func=func, queue=queue.name, kwargs={"seconds": seconds})
                for queue, func, n in plan
                for _ in range(n)
            ]
        )
        worker = h.WorkerProcess(
            h.worker_config(database, "load", max_connections=POOL, shutdown_timeout=10.0),
            tmp_path,
        )
        fleet.append(worker)
        began = time.monotonic()
        peak_conns = peak_running = 0
        all_running_after: float | None = None
        conn = await psycopg.AsyncConnection.connect(database, autocommit=True)
        async with conn:
            with anyio.fail_after(120):
                while True:
                    cur = await conn.execute(
                        "SELECT"
                        " (SELECT count(*) FROM pg_stat_activity WHERE application_name = %s),"
                        " (SELECT count(*) FROM chancy_jobs WHERE state = 'running'),"
                        " (SELECT count(*) FROM chancy_jobs WHERE state = 'succeeded')",
                        (app_name,),
                    )
                    conns, running, succeeded = await cur.fetchone() or (0, 0, 0)
                    peak_conns = max(peak_conns, conns)
                    peak_running = max(peak_running, running)
                    if running == total and all_running_after is None:
                        all_running_after = time.monotonic() - began
                    if succeeded == total:
                        break
                    await anyio.sleep(0.05)
        finished = time.monotonic() - began
        worker.terminate()
        code = await worker.wait(20)

    report.add(name, "1,000 in flight: most running at once", peak_running, peak_running == total)
    report.add(name, "1,000 in flight: all running after (s)", all_running_after or "never")
    report.add(
        name,
        f"1,000 in flight: worker connections, peak (pool {POOL} + listener)",
        peak_conns,
        0 < peak_conns <= POOL + 1,
    )
    report.add(name, f"1,000 in flight: all done after (s; jobs sleep {seconds:.0f} s)", finished)
    assert peak_running == total
    assert 0 < peak_conns <= POOL + 1
    assert code == 0, worker.tail()


async def test_concurrent_pushers_never_duplicate_a_unique_key(database, mode, report):
    name = "4. load"
    pushers = 50
    keys = [f"key-{i}" for i in range(mode.pick(2_000, 500))]
    errors: dict[str, int] = {}
    seen: dict[str, set[str]] = {}
    async with Chancy(database, autoload_plugins=False, max_connections=pushers) as app:
        await app.declare(Queue("u"))  # a push to an undeclared queue fails

        async def pusher(seed: int) -> None:
            rng = random.Random(seed)
            order = keys[:]
            rng.shuffle(order)
            i = 0
            while i < len(order):
                batch = order[i : i + rng.randint(1, 20)]
                i += len(batch)
                jobs = [Job(func="chaos.jobs.noop", queue="u", unique_key=k) for k in batch]
                try:
                    refs = await app.push_many(jobs)
                except Exception as exc:
                    kind = f"{type(exc).__name__}: {str(exc)[:80]}"
                    errors[kind] = errors.get(kind, 0) + 1
                    continue
                for key, ref in zip(batch, refs, strict=True):
                    seen.setdefault(key, set()).add(ref.identifier)

        began = time.monotonic()
        with anyio.fail_after(300):
            async with anyio.create_task_group() as tg:
                for seed in range(pushers):
                    tg.start_soon(pusher, seed)
        took = time.monotonic() - began
    found = await h.rows(database, "SELECT unique_key, id::text FROM chancy_jobs")
    rows_per_key: dict[str, list[str]] = {}
    for key, ident in found:
        rows_per_key.setdefault(key, []).append(ident)
    duplicates = sum(len(v) > 1 for v in rows_per_key.values())
    disagreeing = sum(len(v) > 1 for v in seen.values())
    wrong = sum(seen[k] != set(rows_per_key.get(k, [])) for k in seen)
    report.add(
        name,
        f"{pushers} pushers x {len(keys)} unique keys: rows / duplicates",
        f"{len(found)} / {duplicates}",
        len(found) == len(keys) and duplicates == 0,
    )
    report.add(
        name, "pushers given another reference for a key", disagreeing + wrong, not disagreeing
    )
    report.add(name, "pushes that raised", errors or 0, not errors)
    report.add(name, f"{pushers * len(keys)} pushes took (s)", took)
    assert not errors, errors
    assert duplicates == 0 and len(found) == len(keys)
    assert disagreeing == 0 and wrong == 0


FILL = """
INSERT INTO chancy_jobs (id, queue, func, kwargs, priority, scheduled_at)
SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'big',
       'chaos.jobs.noop', '{}'::jsonb, g %% 5, now() - interval '1 minute'
FROM generate_series(1, %s) AS g
"""


async def _claim_latencies(dsn: str, rounds: int, limit: int) -> list[float]:
    claim = h_schema().render(q.CLAIM_JOBS)
    params = {
        "queue": "big",
        "limit": limit,
        "worker_id": "chaos-latency-probe",
        "token": str(uuid.uuid4()),
    }
    taken: list[float] = []
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    async with conn:
        for _ in range(rounds):
            began = time.perf_counter()
            cur = await conn.execute(claim, params, prepare=True)
            claimed = await cur.fetchall()
            taken.append((time.perf_counter() - began) * 1000)
            assert len(claimed) == limit, await h.states(dsn)
    return taken


def h_schema() -> Any:
    return q.Schema("chancy_")


async def test_claiming_stays_fast_with_a_million_pending_jobs(
    database, mode, report, fleet, tmp_path
):
    name = "4. load"
    pending = mode.pick(1_000_000, 200_000)
    label = f"{pending:,} pending"
    async with Chancy(database, autoload_plugins=False, max_connections=1) as app:
        await app.declare(Queue("big", concurrency=100, polling_interval=0.5))  # claims read it
    conn = await psycopg.AsyncConnection.connect(database, autocommit=True)
    async with conn:
        began = time.monotonic()
        await conn.execute(FILL, (pending,))
        filled = time.monotonic() - began
        await conn.execute("VACUUM ANALYZE chancy_jobs")
        claim = h_schema().render(q.CLAIM_JOBS)
        async with conn.transaction(force_rollback=True):
            cur = await conn.execute(
                b"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + claim,
                {"queue": "big", "limit": 10, "worker_id": "explain", "token": str(uuid.uuid4())},
            )
            plan = "\n".join(r[0] for r in await cur.fetchall())
    uses_index = "chancy_jobs_fetch_idx" in plan
    before = await _claim_latencies(database, 200, 10)

    # A real worker on that queue: how many jobs a second it claims, runs and completes.
    async with Chancy(database, autoload_plugins=False, max_connections=2) as app:
        worker = h.WorkerProcess(h.worker_config(database, "big", shutdown_timeout=10.0), tmp_path)
        fleet.append(worker)
        await h.wait_registered(database, [worker.worker_id])
        start_count = await h.scalar(
            database, "SELECT count(*) FROM chancy_jobs WHERE state = 'succeeded'"
        )
        window = mode.pick(15.0, 6.0)
        most_running = 0
        sampling_until = time.monotonic() + window
        while time.monotonic() < sampling_until:  # claims never run ahead of completions
            running = await h.scalar(
                database, "SELECT count(*) FROM chancy_jobs WHERE taken_by = 'big'"
            )
            most_running = max(most_running, running)
            await anyio.sleep(0.1)
        end_count = await h.scalar(
            database, "SELECT count(*) FROM chancy_jobs WHERE state = 'succeeded'"
        )
        worker.terminate()
        code = await worker.wait(20)
    rate = (end_count - start_count) / window
    after = await _claim_latencies(database, 200, 10)

    report.add(name, f"{label}: INSERT ... SELECT generate_series (s)", filled)
    report.add(name, f"{label}: claim plan uses the fetch index", uses_index, uses_index)
    report.add(
        name,
        f"{label}: claim of 10, p50 / p95 / max (ms)",
        f"{h.percentile(before, 50):.2f} / {h.percentile(before, 95):.2f} / {max(before):.2f}",
        h.percentile(before, 95) < 50,
    )
    report.add(name, f"{label}: one worker (concurrency 100, noop) jobs/s", round(rate))
    report.add(
        name,
        f"{label}: most rows running under that worker (<= 2 x 100)",
        most_running,
        most_running <= 200,
    )
    report.add(
        name,
        f"{label}: claim of 10 after it drained {end_count:,}, p50 / p95 (ms)",
        f"{h.percentile(after, 50):.2f} / {h.percentile(after, 95):.2f}",
        h.percentile(after, 95) < 50,
    )
    report.notes.append(f"EXPLAIN (ANALYZE) of the worker's claim with {label} jobs:\n{plan}")
    assert uses_index, plan
    assert h.percentile(before, 95) < 50 and h.percentile(after, 95) < 50
    assert most_running <= 200, "claims ran ahead of the completion writes"
    assert code == 0, worker.tail()
