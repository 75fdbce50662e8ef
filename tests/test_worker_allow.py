"""Only allowed code runs; bad rows and bad kwargs fail clearly and the worker goes on."""

from __future__ import annotations

import json
import sys

import anyio
import pytest
import test_worker_support as s

from chancy_core import Job, Queue

pytestmark = [pytest.mark.anyio, pytest.mark.db]

ALLOW = ["test_worker_support"]


@pytest.fixture
def trap(tmp_path, monkeypatch):
    """An importable module that leaves a file behind if it is ever imported."""
    marker = tmp_path / "imported"
    (tmp_path / "chancy_trap_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef run(**kwargs):\n    return 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("chancy_trap_module", None)
    yield marker
    sys.modules.pop("chancy_trap_module", None)


async def test_a_disallowed_function_is_refused_without_importing_it(chancy, run_worker, trap):
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", polling_interval=0.1))
        async with run_worker(chancy, allow=ALLOW):
            refs = await chancy.push_many(
                [
                    Job(func="os.system", queue="q", kwargs={"command": "true"}, max_attempts=3),
                    Job(func="chancy_trap_module.run", queue="q"),
                    s.make_job(s.sync_add, "q", a=1, b=2),
                ]
            )
            system, trapped, allowed = await s.wait_all(chancy, refs, "failed", "succeeded")
    assert system.state.value == "failed" and system.attempts == 1  # never retried
    assert "may not run os.system" in system.errors[0]["traceback"]
    assert s.raised(system).startswith("chancy_core.errors.JobNotAllowedError: this worker may")
    assert (
        trapped.state.value == "failed" and "not under an allowed" in trapped.errors[0]["traceback"]
    )
    assert not trap.exists() and "chancy_trap_module" not in sys.modules
    assert allowed.state.value == "succeeded"


async def test_an_allowed_module_does_not_allow_what_it_imported(chancy, run_worker):
    """`test_worker_support.os.system` is os.system reached through an allowed module."""
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", polling_interval=0.1))
        async with run_worker(chancy, allow=ALLOW):
            ref = await chancy.push(
                Job(func="test_worker_support.os.system", queue="q", kwargs={"command": "true"})
            )
            job = await s.wait_state(chancy, ref, "failed")
    assert "may not run test_worker_support.os.system" in job.errors[0]["traceback"]
    assert "posix.system" in job.errors[0]["traceback"]


@pytest.mark.parametrize("executor", ["async", "process"])
async def test_registered_jobs_run_with_an_empty_allow_list(chancy, run_worker, executor):
    with anyio.fail_after(15):
        await chancy.declare(Queue("registered", executor=executor, polling_interval=0.1))
        async with run_worker(chancy, allow=[]):
            ok = await chancy.push(s.registered_job.job.with_kwargs(x=4))
            refused = await chancy.push(s.make_job(s.sync_add, "registered", a=1, b=1))
            good, bad = await s.wait_all(chancy, [ok, refused], "failed", "succeeded", timeout=10)
    assert good.state.value == "succeeded"
    assert bad.state.value == "failed" and "nor registered with @job" in bad.errors[0]["traceback"]


@pytest.mark.parametrize("executor", ["async", "thread", "process"])
async def test_kwargs_the_function_does_not_take_fail_without_retry(chancy, run_worker, executor):
    chancy.check_kwargs_on_push = False  # push would refuse them: the worker's check here
    with anyio.fail_after(15):
        await chancy.declare(Queue("q", executor=executor, polling_interval=0.1))
        async with run_worker(chancy):
            ref = await chancy.push(
                s.make_job(s.sync_add, "q", a=1, c=2).with_max_attempts(3)  # no `c`, no `b`
            )
            job = await s.wait_state(chancy, ref, "failed", timeout=10)
    assert job.attempts == 1
    text = job.errors[0]["traceback"]
    assert "TypeError" in text
    assert "the job's kwargs (a, c) do not fit the signature of" in text
    assert "test_worker_support.sync_add(a" in text


async def test_a_type_error_inside_the_function_is_retried(chancy, run_worker):
    """Only a signature mismatch is permanent; a TypeError the job raises is not."""
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", polling_interval=0.1))
        async with run_worker(chancy):
            ref = await chancy.push(s.make_job(s.sync_add, "q", a=1, b="x").with_max_attempts(2))
            job = await s.wait_state(chancy, ref, "failed")
    assert job.attempts == 2


async def test_garbage_rows_fail_and_the_worker_goes_on(chancy, run_worker):
    with anyio.fail_after(10):
        await chancy.declare(Queue("q", concurrency=5, polling_interval=0.1))
        async with run_worker(chancy) as worker:
            ids = [
                await s.insert_row(chancy, queue="q", func="not a function name!"),
                await s.insert_row(chancy, queue="q", func="x.y", meta=json.dumps([1, 2])),
                await s.insert_row(chancy, queue="q", func="x.y", kwargs=json.dumps("text")),
                await s.insert_row(
                    chancy, queue="q", func="x.y", limits=json.dumps([{"t": "bogus", "v": 1}])
                ),
                await s.insert_row(
                    chancy, queue="q", func="no_such_module_anywhere.f", max_attempts=3
                ),
                await s.insert_row(
                    chancy, queue="q", func="test_worker_support.GAUGE", max_attempts=3
                ),
            ]
            jobs = [await s.wait_row(chancy, i, "failed") for i in ids]
            ok = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1))
            await s.wait_state(chancy, ok, "succeeded")
            assert not worker._stopped.is_set()
    errors = [job["errors"][0]["traceback"] for job in jobs]
    for text in errors[:4]:
        assert "invalid job row, not run" in text
    assert "invalid func 'not a function name!'" in errors[0]
    assert "meta must be a dict" in errors[1]
    assert "kwargs must be a dict" in errors[2]
    assert "invalid serialized limit" in errors[3]
    assert "no module of 'no_such_module_anywhere.f'" in errors[4]
    assert "is not callable" in errors[5]
    # Not retried (another attempt cannot help), and the attempt is the one that ran.
    assert [job["attempts"] for job in jobs] == [1] * 6
    assert [job["errors"][0]["attempt"] for job in jobs] == [1] * 6
