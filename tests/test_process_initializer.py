"""CHANCY_PROCESS_INITIALIZER: each process-executor child calls it once before its first
job (how a framework such as Django sets itself up in the children)."""

from __future__ import annotations

import os

import anyio
import pytest
import test_worker_support as s

from chancy_core import Chancy, Queue
from chancy_core.executors.process import INITIALIZER_ENV

pytestmark = [pytest.mark.anyio, pytest.mark.db]

_CALLS: list[int] = []  # in a child: the pid, once per initializer call


def initialize() -> None:
    """The initializer under test: records that it ran in this process."""
    _CALLS.append(os.getpid())


def initialize_badly() -> None:
    """An initializer that fails, as a misconfigured framework would."""
    raise RuntimeError("settings are missing")


def calls() -> list[int]:
    """A job: the initializer calls this process saw."""
    return list(_CALLS)


async def test_each_child_runs_the_initializer_once_before_its_jobs(
    database, run_worker, monkeypatch
):
    monkeypatch.setenv(INITIALIZER_ENV, f"{__name__}.initialize")
    recorder = s.Recorder()
    async with Chancy(database, plugins=[recorder]) as chancy:
        with anyio.fail_after(30):
            await chancy.declare(Queue("q", executor="process", polling_interval=0.1))
            async with run_worker(chancy):
                refs = await chancy.push_many([s.make_job(calls, "q") for _ in range(3)])
                await s.wait_all(chancy, refs, "succeeded", timeout=20)
    seen = [recorder.results[str(r)] for r in refs]
    child = seen[0][0]
    assert child != os.getpid()
    assert seen == [[child]] * 3  # one child (concurrency 1), initialized once
    assert _CALLS == []  # never in the worker's own process


async def test_a_failing_initializer_fails_the_jobs_with_its_traceback(
    chancy, run_worker, monkeypatch
):
    monkeypatch.setenv(INITIALIZER_ENV, f"{__name__}.initialize_badly")
    with anyio.fail_after(30):
        await chancy.declare(Queue("q", executor="process", polling_interval=0.1))
        async with run_worker(chancy):
            ref = await chancy.push(s.make_job(calls, "q"))
            failed = await s.wait_state(chancy, ref, "failed", timeout=20)
    text = failed.errors[0]["traceback"]
    assert f"{INITIALIZER_ENV}={__name__}.initialize_badly failed" in text
    assert "RuntimeError: settings are missing" in text
