"""The scheduler against a real database: exactly once, run-time changes, restarts."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
from chancy_plugin_cron import META_KEY, Cron, CronError

from chancy_core import Chancy, Job, Queue, Worker, hookimpl

pytestmark = [pytest.mark.anyio, pytest.mark.db]

RunWorker = Callable[..., AbstractAsyncContextManager[Worker]]


async def tick() -> None:
    """The scheduled function."""


async def refused() -> None:
    """A function the Refuse plugin will not let anyone push."""


class Refuse:
    """Makes every push that contains a job of `refused` fail (a hook that raises would
    only be logged: it gives those jobs a meta no push accepts, a NUL character)."""

    name = "refuse"

    @hookimpl
    def chancy_before_push(self, jobs: list[Job]) -> None:
        for i, job in enumerate(jobs):
            if job.func.endswith(".refused"):
                jobs[i] = job.with_meta({**job.meta, "refused": "on purpose\x00"})


class CountingCron(Cron):
    """Counts the scheduler ticks of this instance."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.ticks = 0

    async def _tick(self, app: Chancy) -> Any:
        self.ticks += 1
        return await super()._tick(app)


async def cron_jobs(app: Chancy, schedule: str) -> list[tuple[str, int, str]]:
    """(unique_key, count, run_at) of the jobs a schedule pushed, by run time."""
    async with app.pool.connection() as conn:
        cur = await conn.execute(
            app.schema.render(
                "SELECT unique_key, count(*), min(meta->'cron'->>'run_at') FROM {jobs}"
                " WHERE meta->'cron'->>'schedule' = %(name)s GROUP BY unique_key ORDER BY 3"
            ),
            {"name": schedule},
        )
        return [tuple(row) for row in await cur.fetchall()]


async def wait_for_runs(app: Chancy, schedule: str, count: int, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while len(await cron_jobs(app, schedule)) < count:
            await anyio.sleep(0.05)


async def test_cron_is_discovered_through_its_entry_point(chancy: Chancy) -> None:
    assert isinstance(chancy.plugins.get_plugin("cron"), Cron)
    assert await Cron.list(chancy) == []  # its table exists: its migration ran


async def test_two_workers_push_each_run_exactly_once(database: str, run_worker: RunWorker) -> None:
    crons = [CountingCron(interval=0.05), CountingCron(interval=0.05)]
    # Only cron: with a leadership plugin installed, only one of them would run the scheduler.
    async with (
        Chancy(database, plugins=[crons[0]], autoload_plugins=False) as a,
        Chancy(database, plugins=[crons[1]], autoload_plugins=False) as b,
    ):
        await a.declare(Queue("default", concurrency=20))
        await Cron.add(a, "every-second", "* * * * * *", Job.from_func(tick))
        with anyio.fail_after(20):
            async with run_worker(a, worker_id="a"), run_worker(b, worker_id="b"):
                await anyio.sleep(3.5)
        pushed = await cron_jobs(a, "every-second")
    assert all(c.ticks > 0 for c in crons), "both workers ran the scheduler"
    assert len(pushed) >= 2
    assert [count for _, count, _ in pushed] == [1] * len(pushed), pushed
    for key, _, run_at in pushed:
        assert key == f"cron:every-second:{run_at}"
        assert datetime.fromisoformat(run_at).microsecond == 0


async def test_concurrent_schedulers_push_an_overdue_run_once(database: str) -> None:
    async with Chancy(database) as a, Chancy(database) as b:
        await Cron.add(a, "minutely", "* * * * *", Job.from_func(tick))
        async with a.pool.connection() as conn:
            await conn.execute(
                a.schema.render(
                    "UPDATE {cron_schedules} SET next_run = now() - interval '10 minutes'"
                )
            )
        results: list[list[Any]] = []

        async def push(app: Chancy) -> None:
            results.append(await Cron().push_due(app))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for app in (a, b, a, b):
                    tg.start_soon(push, app)
        pushed = await cron_jobs(a, "minutely")
        schedule = await Cron.get(a, "minutely")
    # Catch-up policy: only the latest missed run is pushed, once.
    assert sum(len(r) for r in results) == 1
    assert len(pushed) == 1 and pushed[0][1] == 1
    run_at = datetime.fromisoformat(pushed[0][2])
    now = datetime.now(UTC)
    assert run_at.second == 0 and now - timedelta(minutes=1) < run_at <= now
    assert schedule is not None and schedule.next_run is not None
    assert schedule.next_run == run_at + timedelta(minutes=1) and schedule.next_run > now
    assert schedule.last_run == run_at


async def test_schedule_in_a_time_zone_stores_its_next_run_in_utc(chancy: Chancy) -> None:
    schedule = await Cron.add(
        chancy, "paris", "30 9 * * *", Job.from_func(tick), timezone="Europe/Paris"
    )
    paris = ZoneInfo("Europe/Paris")
    now = datetime.now(paris)
    expected = now.replace(hour=9, minute=30, second=0, microsecond=0)
    if expected <= now:
        expected = (now + timedelta(days=1)).replace(hour=9, minute=30, second=0, microsecond=0)
    expected = expected.replace(fold=0)  # the wall time 09:30 at that day's offset
    assert schedule.next_run == expected.astimezone(UTC)
    assert schedule.timezone == "Europe/Paris"
    assert (await Cron.list(chancy))[0].next_run == schedule.next_run


async def test_schedules_are_added_and_removed_while_the_worker_runs(
    database: str, run_worker: RunWorker
) -> None:
    async with Chancy(database, plugins=[Cron(interval=0.05)]) as app:
        await app.declare(Queue("default", concurrency=10))
        with anyio.fail_after(20):
            async with run_worker(app):
                await anyio.sleep(0.2)
                schedule = await Cron.add(app, "live", "* * * * * *", Job.from_func(tick))
                assert [s.name for s in await Cron.list(app)] == ["live"]
                await wait_for_runs(app, "live", 2)
                assert await Cron.remove(app, "live")
                after_removal = await cron_jobs(app, "live")
                await anyio.sleep(1.5)
                assert await cron_jobs(app, "live") == after_removal
                assert not await Cron.remove(app, "live")
                assert await Cron.list(app) == []
    assert schedule.job.func.endswith(".tick")
    refs = [key for key, _, _ in after_removal]
    assert len(refs) == len(set(refs))


async def test_restarting_the_scheduler_does_not_push_a_run_twice(
    database: str, run_worker: RunWorker
) -> None:
    async with Chancy(database, plugins=[Cron(interval=0.05)]) as first:
        await first.declare(Queue("default", concurrency=10))
        await Cron.add(first, "restart", "* * * * * *", Job.from_func(tick))
        with anyio.fail_after(20):
            async with run_worker(first):
                await wait_for_runs(first, "restart", 2)
        before = await cron_jobs(first, "restart")
    async with Chancy(database, plugins=[Cron(interval=0.05)]) as second:
        with anyio.fail_after(20):
            async with run_worker(second):
                await wait_for_runs(second, "restart", len(before) + 2)
        after = await cron_jobs(second, "restart")
    assert [count for _, count, _ in after] == [1] * len(after), after
    assert after[: len(before)] == before
    assert after[len(before)][2] > before[-1][2]


async def test_pushed_jobs_carry_the_cron_meta_and_run(
    database: str, run_worker: RunWorker
) -> None:
    async with Chancy(database, plugins=[Cron(interval=0.05)]) as app:
        await app.declare(Queue("default", concurrency=10))
        template = Job.from_func(tick, meta={"mine": 1}, priority=3)
        await Cron.add(app, "meta", "* * * * * *", template)
        with anyio.fail_after(20):
            async with run_worker(app):
                refs = await Cron(interval=0.05).push_due(app)
                await wait_for_runs(app, "meta", 1)
                async with app.pool.connection() as conn:
                    cur = await conn.execute(
                        app.schema.render(
                            "SELECT id FROM {jobs} WHERE meta->'cron'->>'schedule' = 'meta'"
                            " ORDER BY id LIMIT 1"
                        )
                    )
                    row = await cur.fetchone()
                    assert row is not None
                job = await app.wait_for_job(str(row[0]), timeout=10)
                rows = await cron_jobs(app, "meta")
                async with app.pool.connection() as conn:
                    cur = await conn.execute(
                        app.schema.render(
                            "SELECT id::text FROM {jobs} WHERE meta->'cron'->>'schedule' = 'meta'"
                        )
                    )
                    ids = {str(r[0]) for r in await cur.fetchall()}
    # push_due raced the worker's own scheduler for the same runs: either may have pushed
    # a run, but each run is one row, and whatever push_due returned is one of those rows.
    assert rows, "no run was pushed"
    assert [count for _, count, _ in rows] == [1] * len(rows), rows
    assert len(ids) == len(rows)
    assert len(refs) <= len(rows)
    assert {str(ref) for ref in refs} <= ids, (refs, ids)
    assert job.state is job.State.SUCCEEDED
    assert job.priority == 3
    assert job.meta["mine"] == 1
    assert job.meta[META_KEY]["schedule"] == "meta"
    assert job.unique_key == f"cron:meta:{job.meta[META_KEY]['run_at']}"
    assert job.scheduled_at == datetime.fromisoformat(job.meta[META_KEY]["run_at"])


@pytest.mark.parametrize(
    ("name", "cron", "timezone", "match"),
    [
        ("bad name!", "* * * * *", "UTC", "invalid schedule name"),
        ("ok", "not cron", "UTC", "invalid cron expression"),
        ("ok", "* * * * *", "Nowhere/Land", "unknown time zone"),
        ("ok", "0 0 30 2 *", "UTC", "has no run time"),
    ],
)
async def test_invalid_schedules_are_refused_and_nothing_is_stored(
    chancy: Chancy, name: str, cron: str, timezone: str, match: str
) -> None:
    with pytest.raises(CronError, match=match):
        await Cron.add(chancy, name, cron, Job.from_func(tick), timezone=timezone)
    assert await Cron.list(chancy) == []


async def test_a_schedule_that_cannot_push_does_not_block_the_others(database: str) -> None:
    async with Chancy(database, plugins=[Refuse()]) as app:
        await Cron.add(app, "good", "* * * * *", Job.from_func(tick))
        await Cron.add(app, "refused", "* * * * *", Job.from_func(refused))
        await Cron.add(app, "broken", "* * * * *", Job.from_func(tick))
        async with app.pool.connection() as conn:
            await conn.execute(
                app.schema.render(
                    "UPDATE {cron_schedules} SET next_run = now() - interval '1 minute',"
                    " job = CASE WHEN name = 'broken' THEN '{{\"func\": \"no way\"}}'::jsonb"
                    " ELSE job END"
                )
            )
        with anyio.fail_after(10):
            refs = await Cron().push_due(app)
            assert await Cron().push_due(app) == []
        schedules = {s.name: s for s in await Cron.list(app) if s.name != "broken"}
        now = datetime.now(UTC)
        async with app.pool.connection() as conn:
            cur = await conn.execute(
                app.schema.render("SELECT name, next_run, last_run FROM {cron_schedules}")
            )
            rows = {name: (next_run, last_run) for name, next_run, last_run in await cur.fetchall()}
    assert len(refs) == 1
    assert [key for key, _, _ in await cron_jobs_of(database, "good")] != []
    assert all(next_run > now for next_run, _ in rows.values())  # every one advanced
    assert rows["good"][1] is not None
    assert rows["refused"][1] is None and rows["broken"][1] is None  # skipped runs
    assert schedules["refused"].next_run == rows["refused"][0]


async def cron_jobs_of(database: str, schedule: str) -> list[tuple[str, int, str]]:
    async with Chancy(database, autoload_plugins=False) as app:
        return await cron_jobs(app, schedule)
