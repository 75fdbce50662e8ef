"""Which jobs a recovery round rescues, what it writes, and what it never touches."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, LiteralString

import anyio
import psycopg
import pytest
from chancy_plugin_recovery import KEY, Recovery

from chancy_core import Chancy, Job, Limit, Queue, QueuedJob, Worker
from chancy_core.errors import ConfigurationError, InvalidJobError


@pytest.fixture
async def app(database: str) -> AsyncIterator[Chancy]:
    async with Chancy(database, autoload_plugins=False, plugins=[Recovery()]) as chancy:
        await chancy.migrate()
        await chancy.execute(
            _op(
                chancy,
                """
                INSERT INTO {workers} (worker_id, hostname, pid, tags, queues, last_seen)
                VALUES ('live', 'h', 1, '{{}}', '{{}}', now()),
                       ('dead', 'h', 2, '{{}}', '{{}}', now() - interval '1 hour')
                """,
                {},
            )
        )
        yield chancy


def _op(app: Chancy, template: LiteralString, params: dict[str, Any]) -> Any:
    rows = yield app.schema.render(template), params
    return rows


async def job_in(
    app: Chancy,
    state: str,
    taken_by: str | None,
    *,
    started_ago: float = 0.0,
    job: Job | None = None,
) -> str:
    """Push a job and force it into ``state``, taken by ``taken_by``, started that long ago."""
    ref = await app.push(job or Job(func="nowhere.to_be_found", max_attempts=3))
    await app.execute(
        _op(
            app,
            """
            UPDATE {jobs} SET state = %(state)s, taken_by = %(taken_by)s, attempts = 1,
                started_at = now() - make_interval(secs => %(ago)s),
                scheduled_at = now() - interval '30 days',
                created_at = now() - interval '30 days',
                completed_at = CASE WHEN %(state)s IN ('succeeded', 'failed')
                    THEN now() - interval '30 days' END
            WHERE id = %(id)s
            """,
            {"state": state, "taken_by": taken_by, "ago": started_ago, "id": ref.identifier},
        )
    )
    return ref.identifier


async def get(app: Chancy, job_id: str) -> QueuedJob:
    found = await app.get_job(job_id)
    assert found is not None
    return found


@pytest.mark.anyio
@pytest.mark.db
async def test_a_round_rescues_dead_gone_and_hung_and_nothing_else(app: Chancy) -> None:
    recovery = Recovery(worker_timeout=60, grace=5, max_rescues=3)
    fresh = await job_in(app, "running", "live", started_ago=1)
    silent = await job_in(app, "running", "dead")
    gone = await job_in(app, "running", "ghost")
    hung = await job_in(
        app,
        "running",
        "live",
        started_ago=3600,
        job=Job(func="a.b", limits=[Limit(Limit.Type.TIME, 10)]),
    )
    in_time = await job_in(
        app,
        "running",
        "live",
        started_ago=10,
        job=Job(func="a.b", limits=[Limit(Limit.Type.TIME, 60)]),
    )
    no_limit = await job_in(app, "running", "live", started_ago=86400)
    others = [
        await job_in(app, s, "dead", started_ago=86400)
        for s in ("pending", "retrying", "succeeded", "failed")
    ]
    untouched = [fresh, in_time, no_limit, *others]
    before = {i: await get(app, i) for i in untouched}

    rescued = await recovery.rescue(app)

    assert sorted((r.job_id, r.state, r.reason, r.worker_id, r.rescues) for r in rescued) == sorted(
        [
            (silent, "pending", "silent", "dead", 1),
            (gone, "pending", "gone", "ghost", 1),
            (hung, "pending", "hung", "live", 1),
        ]
    )
    for job_id, reason, words in [
        (silent, "silent", "stopped sending heartbeats"),
        (gone, "gone", "is gone"),
        (hung, "hung", "ran past its time limit of 10 s plus 5 s of grace"),
    ]:
        job = await get(app, job_id)
        assert job.state is QueuedJob.State.PENDING
        assert job.attempts == 1  # not decremented: attempt numbers only grow
        assert job.meta[KEY]["rescues"] == 1 and job.meta[KEY]["last_reason"] == reason
        assert len(job.errors) == 1 and words in job.errors[0]["traceback"]
        assert "runs again (rescue 1 of at most 3)" in job.errors[0]["traceback"]
    assert {i: await get(app, i) for i in untouched} == before
    assert await recovery.rescue(app) == []  # a second round finds nothing


@pytest.mark.anyio
@pytest.mark.db
async def test_a_job_rescued_more_than_max_rescues_fails_saying_so(app: Chancy) -> None:
    recovery = Recovery(max_rescues=2)
    job_id = await job_in(app, "running", "dead")
    for _ in (1, 2):
        assert [r.state for r in await recovery.rescue(app)] == ["pending"]
        await app.execute(
            _op(
                app,
                "UPDATE {jobs} SET state = 'running', taken_by = 'dead' WHERE id = %(id)s",
                {"id": job_id},
            ),
        )
    [last] = await recovery.rescue(app)
    assert (last.state, last.rescues) == ("failed", 3)
    job = await get(app, job_id)
    assert job.state is QueuedJob.State.FAILED and job.completed_at is not None
    assert job.meta[KEY]["rescues"] == 3 and len(job.errors) == 3
    assert "more than max_rescues (2), so it failed" in job.errors[-1]["traceback"]


@pytest.mark.anyio
@pytest.mark.db
async def test_a_jobs_own_max_rescues_wins(app: Chancy) -> None:
    job_id = await job_in(
        app, "running", "dead", job=Recovery.limit(Job(func="a.b", meta={"x": 1}), max_rescues=0)
    )
    [rescue] = await Recovery(max_rescues=5).rescue(app)
    assert rescue.state == "failed"
    job = await get(app, job_id)
    assert job.meta == {"x": 1, KEY: {**job.meta[KEY], "max_rescues": 0, "rescues": 1}}


@pytest.mark.anyio
@pytest.mark.db
async def test_a_row_a_worker_is_writing_is_skipped_and_keeps_its_outcome(
    app: Chancy, database: str
) -> None:
    """The fence: a worker completing the job holds its row; recovery must not touch it."""
    job_id = await job_in(app, "running", "dead")
    completing = await psycopg.AsyncConnection.connect(database)
    async with completing:
        await completing.execute(
            app.schema.render(
                "UPDATE {jobs} SET state = 'succeeded', taken_by = NULL, completed_at = now()"
                " WHERE id = %(id)s AND state = 'running' AND taken_by = 'dead'"
            ),
            {"id": job_id},
        )  # not committed yet: the row is locked
        with anyio.fail_after(5):
            assert await Recovery().rescue(app) == []
        await completing.commit()
    assert await Recovery().rescue(app) == []
    job = await get(app, job_id)
    assert job.state is QueuedJob.State.SUCCEEDED and job.errors == [] and KEY not in job.meta


@pytest.mark.anyio
@pytest.mark.db
async def test_junk_in_limits_or_meta_does_not_break_a_round(app: Chancy) -> None:
    junk = await job_in(app, "running", "dead", job=Job(func="a.b", meta={KEY: "junk"}))
    await app.execute(
        _op(
            app,
            """UPDATE {jobs} SET limits = '[{{"t": "time", "v": "soon"}}, 3]' WHERE id = %(id)s""",
            {"id": junk},
        )
    )
    [rescue] = await Recovery().rescue(app)
    assert rescue.job_id == junk and rescue.rescues == 1
    [(meta,)] = await app.execute(
        _op(app, "SELECT meta FROM {jobs} WHERE id = %(id)s", {"id": junk})
    )
    assert meta[KEY]["rescues"] == 1


@pytest.mark.anyio
@pytest.mark.db
async def test_long_silent_workers_without_jobs_are_forgotten(app: Chancy) -> None:
    await job_in(app, "running", "dead")
    recovery = Recovery(forget_workers_after=60)
    assert await recovery.forget_workers(app) == []  # it still runs a job
    await recovery.rescue(app)
    assert await recovery.forget_workers(app) == ["dead"]
    assert await Recovery(forget_workers_after=None).forget_workers(app) == []


@pytest.mark.anyio
@pytest.mark.db
async def test_the_task_runs_only_on_the_leader_and_rescues(app: Chancy, database: str) -> None:
    registered: list[tuple[str, bool]] = []
    recovery = Recovery(interval=0.05)

    def register(name: str, func: object, *, leader_only: bool = False) -> None:
        registered.append((name, leader_only))

    recovery.chancy_worker_tasks(register)
    assert registered == [("recovery", True)]

    job_id = await job_in(app, "running", "dead")
    await app.declare(Queue("default", polling_interval=5))
    with anyio.fail_after(5):
        async with (
            Chancy(database, autoload_plugins=False, plugins=[recovery]) as fast,
            Worker(fast, heartbeat_interval=0.5, shutdown_timeout=1) as worker,
        ):
            assert worker.is_leader
            while (await get(app, job_id)).meta.get(KEY) is None:
                await anyio.sleep(0.05)
    assert (await get(app, job_id)).meta[KEY]["rescues"] == 1


def test_installed_plugin_is_discovered() -> None:
    app = Chancy("postgresql://localhost/unused")
    assert isinstance(app.plugins.get_plugin(KEY), Recovery)


@pytest.mark.parametrize(
    "options",
    [
        {"interval": 0},
        {"worker_timeout": -1},
        {"grace": -1},
        {"max_rescues": -1},
        {"batch_size": 0},
        {"forget_workers_after": 0},
        {"interval": True},
    ],
)
def test_invalid_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Recovery(**options)


def test_limit_refuses_a_job_already_rescued() -> None:
    with pytest.raises(InvalidJobError):
        Recovery.limit(Job(func="a.b", meta={KEY: {"rescues": 1}}), max_rescues=3)


@pytest.mark.anyio
@pytest.mark.db
async def test_each_rescue_is_logged_once_with_its_function_and_attempt(
    app: Chancy, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="chancy_plugin_recovery")
    job_id = await job_in(app, "running", "dead", job=Job(func="billing.charge", max_attempts=3))
    [rescue] = await Recovery().rescue(app)
    assert (rescue.func, rescue.attempt) == ("billing.charge", 1)
    lines = [r.getMessage() for r in caplog.records if job_id in r.getMessage()]
    assert lines == [
        f"job {job_id} (billing.charge) attempt 1 was rescued from worker dead (silent):"
        " it runs again (rescue 1)"
    ]


def test_the_plugin_tells_the_worker_it_recovers_dead_workers() -> None:
    assert Recovery().recovers_dead_workers is True  # see docs/hooks.md
