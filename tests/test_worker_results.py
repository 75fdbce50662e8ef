"""Results and progress: a job's return value is stored, and its progress is readable while
it runs, in every executor (real workers, real database)."""

from __future__ import annotations

import anyio
import pytest
import results_jobs as r
import test_worker_support as s

from chancy_core import Chancy, Job, Queue
from chancy_core.job import QueuedJob

pytestmark = [pytest.mark.anyio, pytest.mark.db]

EXECUTORS = ["async", "thread", "process"]


def _job(func, queue: str, **kwargs) -> Job:
    return Job.from_func(func, queue=queue, kwargs=kwargs)


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_a_jobs_return_value_is_stored_and_read_back(chancy: Chancy, run_worker, executor):
    value = {"n": 1, "list": [1, 2.5, "é", None, True], "nested": {"a": []}}
    with anyio.fail_after(40):
        await chancy.declare(Queue("q", executor=executor, concurrency=2, polling_interval=0.2))
        async with run_worker(chancy):
            refs = await chancy.push_many(
                [
                    _job(r.give, "q", value=value),
                    _job(r.agive, "q", value=[1, "two"]),
                    _job(r.give, "q", value=None),
                    _job(r.give, "q", value="text"),
                ]
            )
            waited = await chancy.wait_for_job(refs[0], timeout=30, interval=0.2)
            jobs = await s.wait_all(chancy, refs, "succeeded", timeout=30)
    assert waited.result == value and waited.result_error is None
    assert [j.result for j in jobs] == [value, [1, "two"], None, "text"]
    assert [j.result_error for j in jobs] == [None] * 4
    got = await chancy.get_job(refs[1])
    assert got is not None and got.result == [1, "two"]
    # pack() carries the result, and unpack() gives the same job back.
    assert QueuedJob.unpack(got.pack()) == got


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_a_result_that_cannot_be_stored_leaves_the_job_succeeded_with_result_error(
    chancy: Chancy, run_worker, executor
):
    with anyio.fail_after(40):
        await chancy.declare(Queue("q", executor=executor, concurrency=2, polling_interval=0.2))
        async with run_worker(chancy, max_result_bytes=1000):
            refs = await chancy.push_many(
                [
                    _job(r.give_set, "q"),
                    _job(r.give_big, "q", size=2000),
                    _job(r.give_big, "q", size=900),
                    _job(r.give_unpicklable, "q"),
                ]
            )
            jobs = await s.wait_all(chancy, refs, "succeeded", timeout=30)
    not_json, too_big, fits, unpicklable = jobs
    assert not_json.result is None
    assert "not JSON-serializable" in (not_json.result_error or "")
    assert too_big.result is None
    assert "2002 bytes of JSON, more than the worker's max_result_bytes (1000)" in (
        too_big.result_error or ""
    )
    assert fits.result == "x" * 900 and fits.result_error is None
    assert unpicklable.result is None and unpicklable.result_error
    if executor == "process":
        assert "could not be sent back from the job's process" in unpicklable.result_error
    else:
        assert "not JSON-serializable" in unpicklable.result_error
    assert all(j.errors == [] for j in jobs)


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_progress_is_readable_while_the_job_runs_and_the_last_is_kept(
    chancy: Chancy, run_worker, executor, tmp_path
):
    gate = tmp_path / "gate"
    func = r.aprogress if executor == "async" else r.progress
    with anyio.fail_after(40):
        await chancy.declare(Queue("q", executor=executor, concurrency=1, polling_interval=0.2))
        async with run_worker(chancy, progress_interval=0.05):
            ref = await chancy.push(_job(func, "q", gate=str(gate)))

            async def half() -> bool:
                job = await chancy.get_job(ref)
                return job is not None and job.progress == {"fraction": 0.5, "message": "half"}

            await s.wait_until(half, timeout=30, what="progress 0.5 while running")
            running = await chancy.get_job(ref)
            assert running is not None and running.state is QueuedJob.State.RUNNING
            gate.touch()
            done = await chancy.wait_for_job(ref, timeout=30, interval=0.2)
    assert done.state is QueuedJob.State.SUCCEEDED
    assert done.progress == {"fraction": 1.0, "message": "done"}
    assert done.result == "finished"


@pytest.mark.parametrize("executor", ["thread", "process"])
async def test_many_progress_reports_are_coalesced_and_the_last_is_written(
    chancy: Chancy, run_worker, executor
):
    with anyio.fail_after(40):
        await chancy.declare(Queue("q", executor=executor, concurrency=1, polling_interval=0.2))
        async with run_worker(chancy):
            ref = await chancy.push(_job(r.many_progress, "q", n=20000))
            done = await chancy.wait_for_job(ref, timeout=30, interval=0.2)
    assert done.state is QueuedJob.State.SUCCEEDED and done.result == 20000
    assert done.progress == {"fraction": 1.0, "message": "last"}


async def test_a_bad_progress_fraction_fails_the_job_clearly(chancy: Chancy, run_worker):
    with anyio.fail_after(20):
        await chancy.declare(Queue("q", executor="thread", concurrency=1, polling_interval=0.2))
        async with run_worker(chancy):
            ref = await chancy.push(_job(r.bad_progress, "q"))
            done = await chancy.wait_for_job(ref, timeout=15, interval=0.2)
    assert done.state is QueuedJob.State.FAILED
    assert (
        "progress fraction must be a number from 0.0 to 1.0, not 1.5" in done.errors[0]["traceback"]
    )


def test_set_progress_outside_a_worker_does_nothing_and_checks_its_input():
    job = QueuedJob(func="m.f", id="no-worker")
    job.set_progress(0.3, "fine")  # no sink: nothing happens
    with pytest.raises(ValueError, match=r"from 0\.0 to 1\.0"):
        job.set_progress(float("nan"))
    with pytest.raises(ValueError, match="string or None"):
        job.set_progress(0.5, 3)  # type: ignore[arg-type]


async def test_worker_refuses_a_bad_max_result_bytes(chancy: Chancy):
    from chancy_core.errors import ConfigurationError
    from chancy_core.worker import Worker

    with pytest.raises(ConfigurationError, match="max_result_bytes"):
        Worker(chancy, max_result_bytes=-1)
    with pytest.raises(ConfigurationError, match="progress_interval"):
        Worker(chancy, progress_interval=0)


async def test_a_new_attempt_starts_without_the_last_attempts_progress(chancy: Chancy, run_worker):
    with anyio.fail_after(30):
        await chancy.declare(Queue("q", executor="thread", polling_interval=0.2))
        async with run_worker(chancy):
            ref = await chancy.push(Job.from_func(r.progress_then_fail, queue="q", max_attempts=2))
            done = await chancy.wait_for_job(ref, timeout=20, interval=0.2)
    assert done.state is QueuedJob.State.SUCCEEDED and done.attempts == 2
    assert done.result == "second" and done.progress is None
    assert "first attempt fails" in done.errors[0]["traceback"]


async def test_progress_and_results_are_fenced_on_the_claim_token(chancy: Chancy):
    """A progress write under another claim's token changes nothing; under the job's own
    claim it is written."""
    import uuid

    from chancy_core import ops

    ref = await chancy.push(Job(func="m.f", queue="q"))
    token = str(uuid.uuid4())

    def running():
        yield (
            chancy.schema.render(
                "UPDATE {jobs} SET state = 'running', taken_by = 'w', claim_token = %(t)s"
                " WHERE id = %(id)s"
            ),
            {"t": token, "id": str(ref)},
        )

    await chancy.execute(running())
    progress = '{"fraction": 0.5, "message": "m"}'
    stale = [{"id": str(ref), "token": str(uuid.uuid4()), "progress": progress}]
    await chancy.execute(ops.set_progress(chancy.schema, "w", stale))
    other_worker = [{"id": str(ref), "token": token, "progress": progress}]
    await chancy.execute(ops.set_progress(chancy.schema, "other", other_worker))
    job = await chancy.get_job(ref)
    assert job is not None and job.progress is None
    await chancy.execute(ops.set_progress(chancy.schema, "w", other_worker))
    job = await chancy.get_job(ref)
    assert job is not None and job.progress == {"fraction": 0.5, "message": "m"}
    # An outcome under a stale token writes no result either.
    stale_outcome = [
        {"id": str(ref), "token": str(uuid.uuid4()), "state": "succeeded", "result": '"late"'}
    ]
    assert await chancy.execute(ops.complete(chancy.schema, "w", stale_outcome)) == set()
    own = [{"id": str(ref), "token": token, "state": "succeeded", "result": '{"ok": 1}'}]
    assert await chancy.execute(ops.complete(chancy.schema, "w", own)) == {str(ref)}
    job = await chancy.get_job(ref)
    assert job is not None and job.result == {"ok": 1} and job.progress["fraction"] == 0.5
