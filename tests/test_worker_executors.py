"""The executors: async, thread and process each run sync and async functions, give
jobs their context, and survive what the job does to its process."""

from __future__ import annotations

import os

import anyio
import pytest
import test_worker_support as s

from chancy_core import Chancy, Queue

pytestmark = [pytest.mark.anyio, pytest.mark.db]

EXECUTORS = ["async", "thread", "process"]


@pytest.fixture
async def recorded(database):
    """An app with a Recorder plugin, and the recorder."""
    recorder = s.Recorder()
    async with Chancy(database, plugins=[recorder]) as app:
        yield app, recorder


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_runs_sync_and_async_functions(recorded, run_worker, executor):
    chancy, recorder = recorded
    with anyio.fail_after(15):
        await chancy.declare(Queue("q", executor=executor, concurrency=2, polling_interval=0.2))
        async with run_worker(chancy):
            refs = await chancy.push_many(
                [
                    s.make_job(s.sync_add, "q", a=1, b=2),
                    s.make_job(s.async_add, "q", a=3, b=4),
                    s.make_job(s.where, "q"),
                    s.make_job(s.async_where, "q"),
                    s.make_job(s.returns_coroutine, "q", a=5, b=6),
                ]
            )
            jobs = await s.wait_all(chancy, refs, "succeeded", timeout=10)
    assert [j.attempts for j in jobs] == [1] * 5
    results = [recorder.results[str(r)] for r in refs]
    assert results[:2] == [3, 7]
    assert results[4] == 11  # the coroutine was awaited, not returned
    sync_where, async_where = results[2], results[3]
    assert async_where["loop"] is True
    if executor == "process":
        assert sync_where["pid"] != os.getpid()
        assert async_where["pid"] != os.getpid()
    else:
        # A plain function never runs on the worker's event loop thread.
        assert sync_where["main_thread"] is False
        assert sync_where["pid"] == async_where["pid"] == os.getpid()


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_job_context_is_the_queued_job(recorded, run_worker, executor):
    chancy, recorder = recorded
    with anyio.fail_after(15):
        await chancy.declare(Queue("q", executor=executor, concurrency=2, polling_interval=0.2))
        async with run_worker(chancy):
            refs = await chancy.push_many(
                [
                    s.make_job(s.context, "q").with_meta({"k": "sync"}),
                    s.make_job(s.async_context, "q").with_meta({"k": "async"}),
                    # A failing first attempt: the second sees attempts == 2.
                    s.make_job(s.fail_until, "q", attempt=2).with_max_attempts(3),
                ]
            )
            await s.wait_all(chancy, refs, "succeeded", timeout=10)
    sync_ctx, async_ctx, attempts = (recorder.results[str(r)] for r in refs)
    assert sync_ctx == {
        "id": str(refs[0]),
        "attempts": 1,
        "meta": {"k": "sync"},
        "state": "running",
    }
    assert async_ctx["meta"] == {"k": "async"} and async_ctx["attempts"] == 1
    assert attempts == 2


@pytest.mark.parametrize("how", ["exit", "sigkill"])
async def test_crashed_process_fails_its_job_and_the_pool_goes_on(chancy, run_worker, how):
    with anyio.fail_after(20):
        await chancy.declare(Queue("q", executor="process", concurrency=1, polling_interval=0.1))
        async with run_worker(chancy):
            crash = (
                s.make_job(s.exit_hard, "q", code=3)
                if how == "exit"
                else s.make_job(s.kill_self, "q")
            )
            # max_attempts > 1: a crash is an ordinary failure, retried like any other.
            ref = await chancy.push(crash.with_max_attempts(2))
            failed = await s.wait_state(chancy, ref, "failed", timeout=10)
            after = await chancy.push_many([s.make_job(s.sync_add, "q", a=1, b=1)] * 3)
            await s.wait_all(chancy, after, "succeeded", timeout=10)
    assert failed.attempts == 2
    assert [e["attempt"] for e in failed.errors] == [1, 2]
    text = failed.errors[-1]["traceback"]
    last = text.strip().splitlines()[-1]
    assert last.startswith("chancy_core.errors.JobCrashed: the process running job")
    assert "exited unexpectedly" in last
    assert ("exit code 3" if how == "exit" else "killed by SIGKILL") in text


async def test_process_errors_come_back_with_their_traceback(chancy, run_worker):
    with anyio.fail_after(15):
        await chancy.declare(Queue("q", executor="process", concurrency=1, polling_interval=0.1))
        async with run_worker(chancy):
            plain, odd, exiting = await chancy.push_many(
                [
                    s.make_job(s.fail, "q", message="boom"),
                    s.make_job(s.raise_odd, "q"),  # cannot be unpickled in the worker
                    s.make_job(s.exit_job, "q"),  # SystemExit inside the job
                ]
            )
            jobs = await s.wait_all(chancy, [plain, odd, exiting], "failed", timeout=10)
            ok = await chancy.push(s.make_job(s.sync_add, "q", a=2, b=2))
            await s.wait_state(chancy, ok, "succeeded", timeout=10)
    plain_tb, odd_tb, exit_tb = (j.errors[0]["traceback"] for j in jobs)
    assert "ValueError: boom" in plain_tb and "in fail" in plain_tb  # the child's frames
    assert "OddError: odd 1 2" in odd_tb
    assert "SystemExit" in exit_tb


@pytest.mark.parametrize("executor", ["async", "thread"])
async def test_system_exit_in_a_job_does_not_stop_the_worker(chancy, run_worker, executor):
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", executor=executor, polling_interval=0.1))
        async with run_worker(chancy) as worker:
            ref = await chancy.push(s.make_job(s.exit_job, "q"))
            job = await s.wait_state(chancy, ref, "failed")
            assert s.raised(job) == "SystemExit: 3"
            ok = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1))
            await s.wait_state(chancy, ok, "succeeded")
            assert not worker._stopped.is_set()


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_a_jobs_own_meta_changes_are_saved(chancy, run_worker, executor):
    """A job edits ``job_context.meta`` in place; the worker saves it with the outcome,
    in every executor (the process one sends the child's meta back), failure included."""
    with anyio.fail_after(20):
        await chancy.declare(Queue("q", executor=executor, concurrency=3, polling_interval=0.2))
        async with run_worker(chancy):
            jobs = [
                s.make_job(s.note_progress, "q", step=1).with_meta({"mine": 1}),
                s.make_job(s.async_note_progress, "q", step=2),
                s.make_job(s.note_progress, "q", step=-1),
            ]
            refs = await chancy.push_many(jobs)
            done = await s.wait_all(chancy, refs, "succeeded", "failed", timeout=15)
    assert [j.state.value for j in done] == ["succeeded", "succeeded", "failed"]
    assert done[0].meta["mine"] == 1
    assert [j.meta["progress"]["step"] for j in done] == [1, 2, -1]
    in_child = [j.meta["progress"]["pid"] != os.getpid() for j in done]
    assert in_child == [executor == "process"] * 3
