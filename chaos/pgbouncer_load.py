"""Two apps with different table prefixes, behind a real PgBouncer in transaction mode.

Run by ``nox -s pgbouncer`` (not collected by the chaos suite: the file name does not
start with ``test_``). PgBouncer (Debian's ``pgbouncer`` package) runs in front of the
server of ``$CHANCY_TEST_DSN`` with a config of its own; the server is not touched.

* The cause: with psycopg's automatic prepared statements (``pgbouncer=False``),
  concurrent pushes through PgBouncer raise raw "prepared statement ..." errors or land
  in the other app's table (statement names are per client connection, the server
  connections are shared).
* The fix, under load: ``pgbouncer=True`` on both apps, concurrent pushers, two worker
  processes per app: nothing raised, nothing lost, nothing run twice, no job in the
  other app's table.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql

from chancy_core import Chancy, Job, Queue, Reference
from chaos import harness as h
from chaos.jobs import EXECUTIONS_DDL
from chaos.pgbouncer import PgBouncer, running_pgbouncer

pytestmark = [pytest.mark.anyio, pytest.mark.db, pytest.mark.slow]

NAME = "pgbouncer"
PREFIXES = ("pa_", "pb_")


@pytest.fixture(scope="module")
def upstream() -> str:
    dsn = os.environ.get("CHANCY_TEST_ADMIN_DSN") or os.environ.get("CHANCY_TEST_DSN")
    if not dsn:
        pytest.fail("set CHANCY_TEST_DSN to the PostgreSQL server PgBouncer should front")
    return dsn


@pytest.fixture(scope="module")
def bouncer(upstream: str) -> Iterator[PgBouncer]:
    with running_pgbouncer(upstream, pool_size=10) as found:
        yield found


@pytest.fixture
async def databases(upstream: str, bouncer: PgBouncer) -> Any:
    """A fresh database with both prefixes migrated (directly); yields (direct, pooled)."""
    name = f"chancy_pgb_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(upstream, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    direct = psycopg.conninfo.make_conninfo(upstream, dbname=name)
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute(EXECUTIONS_DDL)  # type: ignore[arg-type]
    for prefix in PREFIXES:
        async with Chancy(direct, prefix=prefix, autoload_plugins=False, pgbouncer=False) as app:
            await app.migrate()
    yield direct, bouncer.dsn(name)
    with psycopg.connect(upstream, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def job(i: int) -> Job:
    return Job(func="chaos.jobs.tracked", queue="pgb", kwargs={"seconds": 0.001 * (i % 5)})


async def push_concurrently(
    apps: dict[str, Chancy], tasks: int, each: int, bulk: int
) -> tuple[dict[str, list[Reference]], list[BaseException]]:
    """``tasks`` tasks per app pushing ``each`` single jobs, plus one ``push_many(bulk)``
    per app; returns the references per prefix and every exception raised."""
    refs: dict[str, list[Reference]] = {p: [] for p in apps}
    errors: list[BaseException] = []

    async def pusher(prefix: str, app: Chancy) -> None:
        for i in range(each):
            try:
                refs[prefix].append(await app.push(job(i)))
            except Exception as exc:  # counted: the test asserts there are none
                errors.append(exc)

    async def bulk_pusher(prefix: str, app: Chancy) -> None:
        try:
            refs[prefix] += await app.push_many([job(i) for i in range(bulk)], batch_size=100)
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for prefix, app in apps.items():
            for _ in range(tasks):
                tg.start_soon(pusher, prefix, app)
            tg.start_soon(bulk_pusher, prefix, app)
    return refs, errors


async def rows_by_table(direct: str) -> dict[str, set[str]]:
    """Every job id in each prefix's table."""
    found = {}
    for prefix in PREFIXES:
        table = sql.Identifier(f"{prefix}jobs")
        ids = await h.rows(direct, sql.SQL("SELECT id::text FROM {}").format(table))
        found[prefix] = {r[0] for r in ids}
    return found


async def test_the_cause_prepared_statements_through_transaction_pooling(databases, report):
    """Not chancy's fix, its reason: psycopg's default prepared statements break here."""
    direct, pooled = databases
    apps = {
        p: Chancy(
            pooled,
            prefix=p,
            autoload_plugins=False,
            pgbouncer=False,
            statement_timeout=None,  # PgBouncer refuses the `options` startup parameter
            max_connections=10,
        )
        for p in PREFIXES
    }
    for app in apps.values():
        await app.open()
    try:
        with anyio.fail_after(120):
            refs, errors = await push_concurrently(apps, tasks=10, each=30, bulk=0)
    finally:
        for app in apps.values():
            await app.close()
    tables = await rows_by_table(direct)
    misrouted = sum(
        1
        for prefix, other in (PREFIXES, PREFIXES[::-1])
        for ref in refs[prefix]
        if ref.identifier in tables[other]
    )
    report.add(
        NAME, "prepared statements on: pushes raised / misrouted", f"{len(errors)} / {misrouted}"
    )
    assert errors or misrouted, (
        "expected psycopg's prepared statements to break behind PgBouncer's transaction"
        " pooling (PgBouncer >= 1.21 with max_prepared_statements would not)"
    )


async def test_two_prefixes_and_their_workers_through_pgbouncer(
    databases, mode, report, fleet, tmp_path: Path
):
    direct, pooled = databases
    tasks, each, bulk = mode.pick((20, 100, 2000), (10, 40, 500))
    apps = {
        p: Chancy(pooled, prefix=p, autoload_plugins=False, pgbouncer=True, max_connections=10)
        for p in PREFIXES
    }
    for app in apps.values():
        await app.open()
    try:
        for app in apps.values():
            await app.declare(Queue("pgb", concurrency=20, polling_interval=0.2))
        workers = []
        for prefix in PREFIXES:
            for n in range(2):
                config = h.worker_config(
                    pooled,
                    f"{prefix}w{n}",
                    heartbeat_interval=1.0,
                    shutdown_timeout=10.0,
                    app={"prefix": prefix, "pgbouncer": True},
                )
                config["jobs_dsn"] = direct
                workers.append(h.WorkerProcess(config, tmp_path))
        fleet.extend(workers)
        with anyio.fail_after(300):
            refs, errors = await push_concurrently(apps, tasks=tasks, each=each, bulk=bulk)
            total = sum(len(r) for r in refs.values())

            async def done() -> int:
                n = 0
                for prefix in PREFIXES:
                    table = sql.Identifier(f"{prefix}jobs")
                    n += await h.scalar(
                        direct,
                        sql.SQL(
                            "SELECT count(*) FROM {} WHERE state IN ('succeeded', 'failed')"
                        ).format(table),
                    )
                return int(n)

            logs = lambda: "\n".join(w.tail(1500) for w in workers)  # noqa: E731
            await h.wait_until(done, lambda n: n == total, 180, f"every job ({logs()})", every=0.5)
            waited = await apps["pa_"].wait_for_job(refs["pa_"][0], timeout=10)
        alive = [w.alive() for w in workers]
        codes = await h.stop_workers(workers)
    finally:
        for app in apps.values():
            await app.close()

    tables = await rows_by_table(direct)
    wrong = {
        prefix: [r.identifier for r in refs[prefix] if r.identifier not in tables[prefix]]
        for prefix in PREFIXES
    }
    states: dict[str, dict[str, int]] = {}
    for prefix in PREFIXES:
        table = sql.Identifier(f"{prefix}jobs")
        found = await h.rows(
            direct, sql.SQL("SELECT state, count(*) FROM {} GROUP BY state").format(table)
        )
        states[prefix] = {s: int(n) for s, n in found}
    twice = await h.scalar(direct, h.RERUN_JOBS)
    executed = await h.scalar(
        direct, "SELECT count(DISTINCT job_id) FROM chaos_executions WHERE finished_at IS NOT NULL"
    )
    overlaps = await h.rows(direct, h.OVERLAPS)
    text = logs()
    report.add(NAME, "pgbouncer=True: jobs pushed / raised", f"{total} / {len(errors)}", not errors)
    report.add(NAME, "jobs in the other prefix's table", sum(map(len, wrong.values())))
    report.add(NAME, "final states", states)
    report.add(NAME, "jobs run twice / overlaps", f"{twice} / {len(overlaps)}", twice == 0)
    report.add(NAME, "workers alive / exit codes", f"{sum(alive)} / {codes}", all(alive))
    assert not errors, errors[:5]
    assert total == len(PREFIXES) * (tasks * each + bulk)
    assert not any(wrong.values()), wrong
    assert all(s == {"succeeded": len(refs[p])} for p, s in states.items()), states
    assert executed == total and twice == 0 and not overlaps, (executed, twice, overlaps)
    assert waited.state is waited.State.SUCCEEDED
    assert "Traceback" not in text and " ERROR " not in text, text
    assert all(alive) and all(c == 0 for c in codes), (codes, text)
