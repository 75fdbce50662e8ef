"""Processing throughput with an empty jobs table and with 1,000,000 finished jobs in it.

    python benchmarks/growth.py [--dsn URL] [--jobs 20000] [--finished 1000000] [--rounds 2]

Runs in an environment with the core and, as deployed, the recovery, pruner and leadership
plugins (``nox -s bench`` installs them: ``.nox/bench/bin/python benchmarks/growth.py``);
``--bare`` runs the core alone. The pruner's index on finished jobs is then maintained by
every completion, as in a deployment. The database named by ``--dsn`` is dropped and
re-created. Progress is polled with index-friendly counts only: a ``count(*)`` over the
whole table would itself slow the run as finished rows pile up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from chancy_core import Chancy, Job, Queue, Worker
from chancy_core import sql as queries

UNFINISHED = (
    "SELECT (SELECT count(*) FROM chancy_jobs WHERE queue = 'bench'"
    " AND state IN ('pending', 'retrying'))"
    " + (SELECT count(*) FROM chancy_jobs WHERE state = 'running' AND taken_by IS NOT NULL)"
)
FILL = (
    "INSERT INTO chancy_jobs (id, queue, func, state, attempts, started_at, completed_at)"
    " SELECT gen_random_uuid(), 'bench', 'growth.noop', 'succeeded', 1, now(), now()"
    " FROM generate_series(1, %s)"
)


#: Plugins a deployment runs, discovered through their entry points unless ``--bare``.
DEPLOYED_PLUGINS = ("recovery", "pruner", "leadership")


async def noop(i: int) -> None:
    """The job every run processes."""


async def process(app: Chancy, jobs: int) -> float:
    """Push ``jobs`` no-op jobs, run one worker until none is left; return jobs/s."""
    job = Job.from_func(noop, queue="bench")
    await app.push_many([job.with_kwargs(i=i) for i in range(jobs)])
    async with app.pool.connection() as conn:
        await conn.execute("ANALYZE chancy_jobs")
    started = time.perf_counter()
    async with Worker(app, shutdown_timeout=5):
        while True:
            async with app.pool.connection() as conn:
                row = await (await conn.execute(UNFINISHED)).fetchone()
            if row is None or row[0] == 0:
                break
            await anyio.sleep(0.05)
    return jobs / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    name = conninfo_to_dict(args.dsn)["dbname"]
    with psycopg.connect(make_conninfo(args.dsn, dbname="postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    results: dict[str, list[float]] = {"empty": [], f"{args.finished:,} finished": []}
    app = Chancy(args.dsn, autoload_plugins=not args.bare)
    missing = [name for name in DEPLOYED_PLUGINS if not app.plugins.has_plugin(name)]
    if missing and not args.bare:
        raise SystemExit(
            f"plugins {', '.join(missing)} are not installed: pip install -e"
            " plugins/chancy-plugin-<name> (or run with --bare)"
        )
    async with app:
        await app.migrate()
        await app.declare(Queue("bench", concurrency=500))
        for n in range(args.rounds):
            async with app.pool.connection() as conn:
                await conn.execute("TRUNCATE chancy_jobs")
            results["empty"].append(await process(app, args.jobs))
            async with app.pool.connection() as conn:
                await conn.execute("TRUNCATE chancy_jobs")
                await conn.execute(FILL, (args.finished,))
                await conn.execute("VACUUM ANALYZE chancy_jobs")
            results[f"{args.finished:,} finished"].append(await process(app, args.jobs))
            print(f"round {n + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in results.items()))
        for label, figures in results.items():
            print(f"{label:>20}: median {statistics.median(figures):,.0f} jobs/s")
        async with app.pool.connection() as conn:
            plan = await conn.execute(
                b"EXPLAIN " + app.schema.render(queries.CLAIM_JOBS),
                {"queue": "bench", "limit": 500, "worker_id": "w"},
            )
            print("\n".join(row[0] for row in await plan.fetchall()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default="postgresql://postgres@/bench_growth?host=/var/run/postgresql"
    )
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bare", action="store_true", help="the core alone, no plugins")
    anyio.run(main, parser.parse_args())
