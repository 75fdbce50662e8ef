"""Retries driven by a real worker on a real database."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from chancy_plugin_retry import KEY, Retry

from chancy_core import Chancy, Job, Queue, QueuedJob, Worker

pytestmark = [pytest.mark.anyio, pytest.mark.db]

RunWorker = Callable[..., AbstractAsyncContextManager[Worker]]

#: (attempt, the scheduled_at it ran for, when it failed) of each attempt of the job under test.
ATTEMPTS: list[tuple[int, datetime, datetime]] = []


class TransientError(Exception):
    """An error worth retrying."""


async def fails(kind: str, succeed_on: int, job_context: QueuedJob) -> str:
    """Fail with ``kind`` until attempt ``succeed_on`` (0: never succeed)."""
    if job_context.attempts == succeed_on:
        ATTEMPTS.append((job_context.attempts, job_context.scheduled_at, datetime.now(UTC)))
        return "done"
    errors: dict[str, type[Exception]] = {
        "value": ValueError,
        "key": KeyError,
        "transient": TransientError,
    }
    ATTEMPTS.append((job_context.attempts, job_context.scheduled_at, datetime.now(UTC)))
    raise errors[kind](f"attempt {job_context.attempts} failed")


@pytest.fixture
async def app(database: str) -> AsyncIterator[Chancy]:
    """An app with only this plugin (whatever else is installed), on a fresh database."""
    ATTEMPTS.clear()
    async with Chancy(database, autoload_plugins=False, plugins=[Retry()]) as chancy:
        await chancy.migrate()
        await chancy.declare(Queue("default", concurrency=2, polling_interval=0.05))
        yield chancy


async def run(app: Chancy, run_worker: RunWorker, job: Job) -> QueuedJob:
    with anyio.fail_after(9):
        async with run_worker(app, heartbeat_interval=0.5):
            ref = await app.push(job)
            return await app.wait_for_job(ref, interval=0.1)


def failing_job(kind: str, succeed_on: int = 0) -> Job:
    return Job.from_func(fails, kwargs={"kind": kind, "succeed_on": succeed_on})


async def test_waits_between_attempts_follow_the_policy(app: Chancy, run_worker: RunWorker) -> None:
    backoff, cap, jitter = 0.2, 0.5, 0.25
    job = Retry.policy(
        failing_job("value"), backoff=backoff, max_backoff=cap, jitter=jitter, max_attempts=4
    )
    done = await run(app, run_worker, job)

    assert done.state is QueuedJob.State.FAILED
    assert done.attempts == 4
    assert [e["attempt"] for e in done.errors] == [1, 2, 3, 4]
    assert all("ValueError" in e["traceback"] for e in done.errors)
    assert [a[0] for a in ATTEMPTS] == [1, 2, 3, 4]
    # The scheduled_at each retry ran for, against the moment the attempt before it failed.
    for (attempt, _, failed_at), (_, scheduled_at, _) in itertools.pairwise(ATTEMPTS):
        base = min(backoff * 2 ** (attempt - 1), cap)
        waited = (scheduled_at - failed_at).total_seconds()
        assert base * (1 - jitter) <= waited <= base * (1 + jitter) + 0.05, (attempt, waited)
    # and the worker honoured it: no retry ran before its time
    for _, scheduled_at, failed_at in ATTEMPTS[1:]:
        assert failed_at >= scheduled_at


async def test_give_up_on_fails_at_once(app: Chancy, run_worker: RunWorker) -> None:
    job = Retry.policy(failing_job("key"), backoff=0, give_up_on=("LookupError",), max_attempts=5)
    done = await run(app, run_worker, job)
    assert done.state is QueuedJob.State.FAILED
    assert (
        done.attempts == 1 and len(done.errors) == 1 and "KeyError" in done.errors[0]["traceback"]
    )


async def test_an_error_not_in_retry_on_fails_at_once(app: Chancy, run_worker: RunWorker) -> None:
    job = Retry.policy(failing_job("value"), backoff=0, retry_on=(TransientError,), max_attempts=5)
    done = await run(app, run_worker, job)
    assert done.state is QueuedJob.State.FAILED
    assert done.attempts == 1 and len(done.errors) == 1


async def test_an_error_in_retry_on_is_retried(app: Chancy, run_worker: RunWorker) -> None:
    job = Retry.policy(
        failing_job("transient", succeed_on=3),
        backoff=0.05,
        retry_on=(f"{__name__}.TransientError",),
        max_attempts=5,
    )
    done = await run(app, run_worker, job)
    assert done.state is QueuedJob.State.SUCCEEDED
    assert done.attempts == 3 and len(done.errors) == 2


async def test_installed_plugin_is_discovered_and_retries(
    chancy: Chancy, run_worker: RunWorker
) -> None:
    """``pip install chancy-plugin-retry`` is all it takes: the entry point loads it."""
    assert isinstance(chancy.plugins.get_plugin(KEY), Retry)
    ATTEMPTS.clear()
    await chancy.declare(Queue("default", polling_interval=0.05))
    job = Retry.policy(failing_job("value", succeed_on=2), backoff=0.3, jitter=0, max_attempts=2)
    done = await run(chancy, run_worker, job)
    assert done.state is QueuedJob.State.SUCCEEDED and done.attempts == 2
    (_, _, failed_at), (_, scheduled_at, _) = ATTEMPTS
    assert scheduled_at - failed_at >= timedelta(seconds=0.3)


def test_retry_is_the_plugins_meta_key() -> None:
    assert Retry.name == KEY == "retry"
    assert Retry().chancy_retry_decision.__name__ == "chancy_retry_decision"
