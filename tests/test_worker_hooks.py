"""The worker's hooks: job starting / wrap / completed, retry decision, worker
started / stopping, background tasks (leader-only too); a hook that raises is
logged and isolated."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import anyio
import pytest
import test_worker_support as s

from chancy_core import Chancy, Queue, RetryDecision, hookimpl

pytestmark = [pytest.mark.anyio, pytest.mark.db]


class Tracer:
    """Implements every job and worker event hook, recording what it saw."""

    name = "tracer"

    def __init__(self) -> None:
        self.events: list[tuple] = []

    @hookimpl
    async def chancy_worker_started(self, worker) -> None:
        self.events.append(("started", worker.worker_id))

    @hookimpl
    async def chancy_worker_stopping(self, worker) -> None:
        self.events.append(("stopping", worker.worker_id))

    @hookimpl
    async def chancy_job_starting(self, job) -> None:
        self.events.append(("starting", job.id, job.state.value, job.attempts))

    @hookimpl
    def chancy_job_wrap(self, job):
        @asynccontextmanager
        async def wrap():
            self.events.append(("enter", job.id))
            try:
                yield
            except BaseException as exc:
                self.events.append(("exit", job.id, type(exc).__name__))
                raise
            else:
                self.events.append(("exit", job.id, None))

        return wrap()

    @hookimpl
    def chancy_job_completed(self, job, outcome) -> None:
        error = outcome.error
        assert outcome.run_seconds >= 0 and outcome.wait_seconds >= 0
        self.events.append(
            (
                "completed",
                job.id,
                job.state.value,
                type(error).__name__ if error else None,
                outcome.result,
            )
        )


async def test_job_hooks_are_called_in_order(database, run_worker):
    tracer = Tracer()
    async with Chancy(database, plugins=[tracer]) as chancy:
        with anyio.fail_after(10):
            await chancy.declare(Queue("q", executor="thread", polling_interval=0.1))
            async with run_worker(chancy) as worker:
                good = await chancy.push(s.make_job(s.sync_add, "q", a=2, b=3))
                await s.wait_state(chancy, good, "succeeded")
                bad = await chancy.push(s.make_job(s.fail, "q", message="no"))
                failed = await s.wait_state(chancy, bad, "failed")
                worker_id = worker.worker_id
        g, b = str(good), str(bad)
        assert tracer.events == [
            ("started", worker_id),
            ("starting", g, "running", 1),
            ("enter", g),
            ("exit", g, None),
            ("completed", g, "succeeded", None, 5),
            ("starting", b, "running", 1),
            ("enter", b),
            ("exit", b, "ValueError"),
            ("completed", b, "failed", "ValueError", None),
            ("stopping", worker_id),
        ]
        assert failed.meta == {}


class LaterRetry:
    name = "later-retry"

    def __init__(self, when: datetime) -> None:
        self.when = when

    @hookimpl
    def chancy_retry_decision(self, job, error):
        return RetryDecision(self.when, meta={"later-retry": {"decided": job.attempts}})


async def test_a_retry_decision_plugin_schedules_the_retry(database, run_worker):
    when = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    async with Chancy(database, plugins=[LaterRetry(when)]) as chancy:
        with anyio.fail_after(10):
            await chancy.declare(Queue("q", polling_interval=0.1))
            async with run_worker(chancy):
                ref = await chancy.push(s.make_job(s.fail, "q", message="x").with_max_attempts(5))
                job = await s.wait_state(chancy, ref, "retrying")
    assert job.scheduled_at == when
    assert job.attempts == 1 and len(job.errors) == 1
    assert job.meta == {"later-retry": {"decided": 1}}  # the decision's meta is saved


class Tasks:
    name = "tasks"

    def __init__(self, elects: bool) -> None:
        self.elects = elects
        self.ran: list[str] = []
        self.stopped: list[str] = []

    @hookimpl
    def chancy_elects_leader(self):
        return True if self.elects else None

    @hookimpl
    def chancy_worker_tasks(self, register) -> None:
        async def everywhere(worker) -> None:
            self.ran.append("everywhere")
            await anyio.sleep_forever()

        async def leader(worker) -> None:
            self.ran.append("leader")
            try:
                await anyio.sleep_forever()
            finally:
                self.stopped.append("leader")

        register("everywhere", everywhere)
        register("leader", leader, leader_only=True)


async def test_tasks_without_a_leadership_plugin_all_run(database, run_worker):
    tasks = Tasks(elects=False)
    async with Chancy(database, plugins=[tasks]) as chancy:
        with anyio.fail_after(5):
            async with run_worker(chancy) as worker:
                await s.wait_until(lambda: len(tasks.ran) == 2)
                assert worker.is_leader
    assert sorted(tasks.ran) == ["everywhere", "leader"]


async def test_leader_only_tasks_wait_for_the_leadership_plugin(database, run_worker):
    tasks = Tasks(elects=True)
    async with Chancy(database, plugins=[tasks]) as chancy:
        with anyio.fail_after(5):
            async with run_worker(chancy) as worker:
                await s.wait_until(lambda: "everywhere" in tasks.ran)
                await anyio.sleep(0.2)
                assert tasks.ran == ["everywhere"] and not worker.is_leader
                await worker.set_leader(True)
                await s.wait_until(lambda: "leader" in tasks.ran)
                await worker.set_leader(False)
                await s.wait_until(lambda: tasks.stopped == ["leader"])
                assert not worker.is_leader


class Broken:
    """Every hook raises (and a task that raises is restarted)."""

    name = "broken"

    def __init__(self) -> None:
        self.task_runs = 0

    @hookimpl
    def chancy_worker_started(self):
        raise RuntimeError("started hook broke")

    @hookimpl
    async def chancy_worker_stopping(self):
        raise RuntimeError("stopping hook broke")

    @hookimpl
    def chancy_worker_tasks(self, register):
        async def flaky(worker):
            self.task_runs += 1
            raise RuntimeError("task broke")

        register("flaky", flaky)
        raise RuntimeError("tasks hook broke")

    @hookimpl
    async def chancy_job_starting(self):
        raise RuntimeError("starting hook broke")

    @hookimpl
    def chancy_job_wrap(self, job):
        if job.kwargs.get("a") == 1:
            raise RuntimeError("wrap hook broke")

        @asynccontextmanager
        async def wrap():
            if job.kwargs.get("a") == 2:
                raise RuntimeError("wrap enter broke")
            yield
            raise RuntimeError("wrap exit broke")

        return wrap()

    @hookimpl
    def chancy_job_completed(self):
        raise RuntimeError("completed hook broke")

    @hookimpl
    def chancy_retry_decision(self):
        raise RuntimeError("retry hook broke")

    @hookimpl
    def chancy_leadership_changed(self):
        raise RuntimeError("leadership hook broke")


async def test_a_hook_that_raises_is_logged_and_isolated(database, run_worker, caplog):
    broken = Broken()
    tracer = Tracer()
    caplog.set_level(logging.ERROR, logger="chancy_core")
    async with Chancy(database, plugins=[broken, tracer]) as chancy:
        with anyio.fail_after(10):
            await chancy.declare(Queue("q", polling_interval=0.1))
            async with run_worker(chancy) as worker:
                refs = await chancy.push_many(
                    [s.make_job(s.sync_add, "q", a=a, b=1) for a in (1, 2, 3)]
                )
                jobs = await s.wait_all(chancy, refs, "succeeded")
                # The retry decision falls back to the core's policy: retried, then failed.
                ref = await chancy.push(s.make_job(s.fail, "q", message="x").with_max_attempts(2))
                failed = await s.wait_state(chancy, ref, "failed")
                assert failed.attempts == 2
                assert not worker._stopped.is_set()
        assert [j.attempts for j in jobs] == [1, 1, 1]
        assert broken.task_runs >= 1
        # The other plugin's hooks all ran.
        kinds = [e[0] for e in tracer.events]
        assert kinds.count("completed") == 5 and "stopping" in kinds
    messages = caplog.text
    for what in (
        "chancy_worker_started",
        "chancy_worker_stopping",
        "chancy_worker_tasks",
        "chancy_job_starting",
        "chancy_job_completed",
        "chancy_retry_decision",
        "entering chancy_job_wrap",
        "exiting chancy_job_wrap",
        "failed in chancy_job_wrap",
        "plugin task flaky failed",
    ):
        assert what in messages, what


class BadMeta:
    """Leaves a meta PostgreSQL refuses (a NUL escape): the outcome is still written."""

    name = "bad-meta"

    @hookimpl
    def chancy_job_starting(self, job):
        job.meta["bad-meta"] = "nul\x00"


async def test_an_outcome_the_database_refuses_is_written_without_meta(database, run_worker):
    async with Chancy(database, plugins=[BadMeta()]) as chancy:
        with anyio.fail_after(10):
            await chancy.declare(Queue("q", concurrency=5, polling_interval=0.1))
            async with run_worker(chancy) as worker:
                refs = await chancy.push_many([s.make_job(s.sync_add, "q", a=1, b=1)] * 5)
                jobs = await s.wait_all(chancy, refs, "succeeded")
                assert not worker._stopped.is_set()
    assert all(j.meta == {} for j in jobs)


class Swallow:
    """A wrapper whose exit returns true, as if to suppress the job's exception."""

    name = "swallow"

    @hookimpl
    def chancy_job_wrap(self, job):
        class Suppress:
            async def __aenter__(self):
                return None

            async def __aexit__(self, *exc_info):
                return True

        return Suppress()


async def test_a_wrapper_cannot_turn_a_failure_into_a_success(database, run_worker, caplog):
    caplog.set_level(logging.WARNING, logger="chancy_core")
    async with Chancy(database, plugins=[Swallow()]) as chancy:
        with anyio.fail_after(10):
            await chancy.declare(Queue("q", polling_interval=0.1))
            async with run_worker(chancy):
                bad = await chancy.push(s.make_job(s.fail, "q", message="kept"))
                good = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1))
                failed = await s.wait_state(chancy, bad, "failed")
                await s.wait_state(chancy, good, "succeeded")
    assert "ValueError: kept" in failed.errors[0]["traceback"]
    assert "tried to suppress" in caplog.text


class Stamper:
    """Changes the job's meta in place where the contract allows it (starting, and around
    the run), and tries to in chancy_job_completed, where it is not saved."""

    name = "stamper"

    def __init__(self) -> None:
        self.completed_meta: list[dict] = []

    @hookimpl
    def chancy_job_starting(self, job) -> None:
        job.meta.setdefault("stamper", {})["starting"] = job.attempts

    @hookimpl
    def chancy_job_wrap(self, job):
        @asynccontextmanager
        async def wrap():
            try:
                yield
            finally:
                job.meta.setdefault("stamper", {})["wrapped"] = True

        return wrap()

    @hookimpl
    def chancy_job_completed(self, job) -> None:
        self.completed_meta.append(dict(job.meta))
        job.meta["stamper"] = "changed too late"


@pytest.mark.parametrize("executor", ["async", "thread", "process"])
async def test_plugins_meta_changes_are_saved_in_every_executor(database, run_worker, executor):
    """Meta changed in chancy_job_starting and chancy_job_wrap is saved with the outcome
    (success and failure, the process executor's child meta merged back), the completion
    hook sees what was saved, and what it changes itself is not saved."""
    stamper = Stamper()
    async with Chancy(database, plugins=[stamper]) as chancy:
        with anyio.fail_after(30):
            await chancy.declare(Queue("q", executor=executor, polling_interval=0.1))
            async with run_worker(chancy):
                refs = await chancy.push_many(
                    [
                        s.make_job(s.note_progress, "q", step=1),
                        s.make_job(s.fail, "q", message="no"),
                    ]
                )
                done = await s.wait_all(chancy, refs, "succeeded", "failed", timeout=25)
    assert [j.state.value for j in done] == ["succeeded", "failed"]
    stamp = {"starting": 1, "wrapped": True}
    assert done[0].meta == {"stamper": stamp, "progress": done[0].meta["progress"]}
    assert done[0].meta["progress"]["step"] == 1  # the job's own change is kept too
    assert done[1].meta == {"stamper": stamp}
    assert sorted(m["stamper"]["starting"] for m in stamper.completed_meta) == [1, 1]
    assert all(m["stamper"] == stamp for m in stamper.completed_meta)
