"""Inline mode: pushed jobs run in the test's process through the worker's own path, their
outcomes stored in the database."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import inline_jobs as ij
import pytest
import test_worker_support as s

from chancy_core import Job, Limit, Outcome, Queue, QueuedJob, concurrency, hookimpl
from chancy_core.concurrency import KeyRule, with_key
from chancy_core.testing import InlineChancy

pytestmark = [pytest.mark.anyio, pytest.mark.db]


@pytest.fixture(autouse=True)
def _fresh() -> None:
    ij.RAN.clear()
    ij.APP = None


class Recorder:
    """A plugin that records every outcome reported (the worker's hooks run inline too)."""

    name = "recorder"

    def __init__(self) -> None:
        self.outcomes: list[tuple[str, str]] = []

    @hookimpl
    def chancy_job_completed(self, worker: Any, job: QueuedJob, outcome: Outcome) -> None:
        self.outcomes.append((job.id, outcome.state.value))


async def test_the_fixture_runs_a_pushed_job_at_once(inline_chancy: InlineChancy) -> None:
    await inline_chancy.declare(Queue("default"))
    ref = await inline_chancy.push(Job.from_func(ij.note, kwargs={"tag": "a"}))
    assert ij.RAN == ["a"]  # ran before push returned
    job = await inline_chancy.get_job(ref)
    assert job is not None and job.state is QueuedJob.State.SUCCEEDED
    assert job.attempts == 1 and job.started_at is not None and job.completed_at is not None


async def test_drain_runs_due_jobs_retries_and_follow_ups(database: str) -> None:
    recorder = Recorder()
    async with InlineChancy(
        database, run_on_push=False, plugins=[recorder], autoload_plugins=False
    ) as app:
        ij.APP = app
        await app.declare(Queue("default", executor="thread", concurrency=2))
        later = datetime.now(UTC) + timedelta(hours=1)
        refs = await app.push_many(
            [
                Job.from_func(ij.sync_note, kwargs={"tag": "plain"}),
                Job.from_func(ij.flaky, kwargs={"tag": "flaky"}, max_attempts=2),
                Job.from_func(ij.sync_note, kwargs={"tag": "later"}, scheduled_at=later),
                Job.from_func(ij.slow, kwargs={"seconds": 3}).with_limits(
                    [Limit(Limit.Type.TIME, 1)]
                ),
            ]
        )
        assert ij.RAN == []  # nothing runs before drain()
        with anyio.fail_after(30):
            await app.drain()
        states = {str(r): j.state for r, j in zip(refs, await app.get_jobs(refs), strict=True)}
        assert list(states.values()) == [
            QueuedJob.State.SUCCEEDED,
            QueuedJob.State.SUCCEEDED,
            QueuedJob.State.PENDING,  # scheduled_at is honoured
            QueuedJob.State.FAILED,  # the time limit, as a worker enforces it
        ]
        assert sorted(ij.RAN) == ["flaky-1", "flaky-2", "plain"]
        slow = await app.get_job(refs[3])
        assert slow is not None and "time limit" in slow.errors[-1]["traceback"]
        # The plugin saw each written outcome, as with a worker.
        assert sorted(recorder.outcomes) == sorted(
            [
                (str(refs[0]), "succeeded"),
                (str(refs[1]), "retrying"),
                (str(refs[1]), "succeeded"),
                (str(refs[3]), "failed"),
            ]
        )

        # A job that pushes another: the follow-up runs in the same drain.
        await app.declare(Queue("default"))  # async executor: the job pushes on APP
        await app.push(Job.from_func(ij.push_follow_up, kwargs={"tag": "parent"}))
        with anyio.fail_after(30):
            await app.drain()
        assert ij.RAN[-2:] == ["parent", "parent-follow-up"]


async def test_sync_push_runs_at_once(database: str) -> None:
    def sync_part() -> QueuedJob | None:
        with InlineChancy(database) as app:
            app.sync_declare(Queue("default", executor="thread"))
            ref = app.sync_push(Job.from_func(ij.sync_note, kwargs={"tag": "sync"}))
            return app.sync_get_job(ref)

    job = await anyio.to_thread.run_sync(sync_part)
    assert job is not None and job.state is QueuedJob.State.SUCCEEDED
    assert ij.RAN == ["sync"]


async def test_drain_keeps_an_ordered_keys_push_order(inline_chancy: InlineChancy) -> None:
    inline_chancy.run_on_push = False
    await inline_chancy.declare(Queue("default", concurrency=5))
    await concurrency.set_rule(inline_chancy, KeyRule("default", "acct:*", ordered=True))
    tags = [f"t{n}" for n in range(5)]
    await inline_chancy.push_many(
        [with_key(Job.from_func(ij.note, kwargs={"tag": t}), "acct:1") for t in tags]
    )
    with anyio.fail_after(30):
        await inline_chancy.drain()
    assert tags == ij.RAN


async def test_drain_warns_about_a_queue_nobody_declared(
    inline_chancy: InlineChancy, caplog: pytest.LogCaptureFixture
) -> None:
    await inline_chancy.push(Job.from_func(ij.note, queue="nowhere", kwargs={"tag": "x"}))
    assert ij.RAN == []
    assert "nowhere" in caplog.text and "declare them" in caplog.text


async def test_inline_runs_process_executor_jobs_in_a_child(
    inline_chancy: InlineChancy, tmp_path: Path
) -> None:
    """The queue's executor is the worker's: a process queue runs the job in a child."""
    await inline_chancy.declare(Queue("default", executor="process"))
    path = tmp_path / "pid"
    ref = await inline_chancy.push(
        Job.from_func(s.pid_then_sleep, kwargs={"path": str(path), "seconds": 0})
    )
    job = await inline_chancy.get_job(ref)
    assert job is not None and job.state is QueuedJob.State.SUCCEEDED, job
    assert int(path.read_text()) != os.getpid()
