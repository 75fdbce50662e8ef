"""The claim's cost with and without concurrency keys.

    python benchmarks/claim_keys.py [--dsn URL] [--jobs 10000] [--keys 100] [--claims 200]
                                    [--limit 10] [--grouped] [--busy] [--explain]

Creates a throw-away database on the server of ``--dsn`` (default ``$CHANCY_TEST_DSN``),
fills four queues with ``--jobs`` pending jobs each, and times ``--claims`` claims of
``--limit`` jobs from each, every claim in a transaction that is rolled back (so each one
sees the same pending jobs):

* ``plain``: no rules: the plain claim (every queue without rules takes it);
* ``keyed, no key``: a queue with a rule whose jobs have no key (the keyed statement's
  floor);
* ``keyed``: jobs spread over ``--keys`` keys, ``max_running=2`` per key;
* ``ordered``: the same keys, one at a time in push order.

Jobs are pushed round-robin over the keys (``k:0, k:1, ...``); with ``--grouped`` each
key's jobs are pushed together (all of ``k:0``, then all of ``k:1``, ...), so the first
jobs in claim order all belong to a few keys. With ``--busy`` the keys ``k:1, k:3, ...
k:99`` are full before the claims (their first jobs marked running: 2 of a ``keyed`` key, 1
of an ``ordered`` one; at most 100 running jobs per queue, as on 100 worker slots), so
claims must pass over jobs that cannot run. ``--explain`` prints the
plans (EXPLAIN ANALYZE) of the keyed claim's two statements on each keyed queue.

Prints the median and the ratio to ``plain``. The machine is shared: read ratios only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

import anyio
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from chancy_core import Chancy, Job, Queue, concurrency, ops
from chancy_core import sql as q
from chancy_core.concurrency import KeyRule, with_key


async def fill(app: Chancy, jobs: int, keys: int, grouped: bool, busy: bool) -> None:
    """Declare the queues and rules, push the jobs."""
    base = Job(func="bench.noop")
    for name in ("plain", "nokey", "keyed", "ordered"):
        await app.declare(Queue(name, concurrency=100))
    await concurrency.set_rule(app, KeyRule("nokey", "k:*", max_running=2))
    await concurrency.set_rule(app, KeyRule("keyed", "k:*", max_running=2))
    await concurrency.set_rule(app, KeyRule("ordered", "k:*", ordered=True))
    for name in ("plain", "nokey", "keyed", "ordered"):
        batch = []
        for i in range(jobs):
            job = base.with_queue(name).with_kwargs(i=i)
            key = i * keys // jobs if grouped else i % keys
            batch.append(job if name in ("plain", "nokey") else with_key(job, f"k:{key}"))
            if len(batch) == 10_000:
                await app.push_many(batch)
                batch = []
        await app.push_many(batch)
    async with app.pool.connection() as conn:
        if busy:
            await conn.execute(
                "UPDATE chancy_jobs AS j SET state = 'running', taken_by = 'busy',"
                " started_at = now(), attempts = 1"
                " FROM (SELECT id, queue, row_number() OVER ("
                "           PARTITION BY queue, meta ->> 'concurrency_key' ORDER BY id) AS n"
                "       FROM chancy_jobs WHERE queue IN ('keyed', 'ordered')"
                "         AND substr(meta ->> 'concurrency_key', 3)::int % 2 = 1"
                "         AND substr(meta ->> 'concurrency_key', 3)::int < 100) AS s"
                " WHERE j.id = s.id AND s.n <= CASE s.queue WHEN 'keyed' THEN 2 ELSE 1 END"
            )
        await conn.execute("VACUUM ANALYZE chancy_jobs")


async def time_claims(app: Chancy, queue: str, claims: int, limit: int, keyed: bool) -> float:
    """The median seconds of ``claims`` claims of ``limit`` jobs (each rolled back)."""
    found = []
    taken = set()
    q = Queue(queue, concurrency=100)
    async with app.pool.connection() as conn:
        for _ in range(claims):
            began = time.perf_counter()
            async with conn.transaction(force_rollback=True):
                claimed = await app.execute_ex(
                    conn, ops.claim(app.schema, q, limit, "bench", keyed=keyed)
                )
            found.append(time.perf_counter() - began)
            taken.add(len(claimed.rows))
    assert len(taken) == 1 and taken.pop() > 0, (queue, taken)  # each claim the same
    return statistics.median(found)


async def explain(app: Chancy, queue: str, limit: int) -> str:
    """EXPLAIN ANALYZE of a keyed claim's two statements on ``queue`` (rolled back): the
    walk, and the per-key look-up (which the claim runs only when the walk was not enough)."""
    params = {
        "queue": queue,
        "limit": limit,
        "worker_id": "bench",
        "token": str(uuid.uuid4()),
        "window": ops.KEYED_WALK + 4 * limit,
    }
    plans = []
    for name, statement in (("walk", q.CLAIM_KEYED_JOBS), ("per key", q.CLAIM_KEYED_PER_KEY)):
        async with app.pool.connection() as conn, conn.transaction(force_rollback=True):
            await conn.execute(
                app.schema.render(q.LOCK_KEYED_CLAIMS), {"lock": ops.keyed_lock(app.schema, queue)}
            )
            cur = await conn.execute(
                b"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + app.schema.render(statement),
                params,
            )
            plans.append(f"-- {name}:\n" + "\n".join(row[0] for row in await cur.fetchall()))
    return "\n".join(plans)


async def main(
    dsn: str,
    jobs: int,
    keys: int,
    claims: int,
    limit: int,
    grouped: bool,
    busy: bool,
    show_plans: bool,
) -> None:
    name = f"chancy_bench_keys_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        async with Chancy(make_conninfo(dsn, dbname=name), autoload_plugins=False) as app:
            await app.migrate()
            await fill(app, jobs, keys, grouped, busy)
            cases = [
                ("plain", "plain", False),
                ("keyed, no key", "nokey", True),
                ("keyed", "keyed", True),
                ("ordered", "ordered", True),
            ]
            for _, queue, keyed in cases:  # warm up
                await time_claims(app, queue, 5, limit, keyed)
            medians = {}
            for label, queue, keyed in cases:
                medians[label] = await time_claims(app, queue, claims, limit, keyed)
            plans = []
            if show_plans:
                plans = [(name, await explain(app, name, limit)) for name in ("keyed", "ordered")]
        print(
            f"{jobs} pending jobs per queue, {keys} keys"
            f" ({'grouped' if grouped else 'round-robin'}{', busy' if busy else ''}),"
            f" {claims} claims of {limit} jobs (medians; ratios to plain)"
        )
        for label, median in medians.items():
            ratio = median / medians["plain"]
            print(f"  {label:<14} {median * 1000:8.3f} ms   x{ratio:.1f}")
        for queue, plan in plans:
            print(f"\nEXPLAIN ANALYZE, one claim of {queue!r}:\n{plan}")
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("CHANCY_TEST_DSN"))
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--grouped", action="store_true", help="push each key's jobs together")
    parser.add_argument("--busy", action="store_true", help="every other key full before")
    parser.add_argument("--explain", action="store_true", help="print the keyed claims' plans")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("give --dsn or set CHANCY_TEST_DSN (a server where databases can be made)")
    anyio.run(
        main,
        args.dsn,
        args.jobs,
        args.keys,
        args.claims,
        args.limit,
        args.grouped,
        args.busy,
        args.explain,
    )
