"""A 10,000-step workflow (a wide fan-out and fan-in of no-op async jobs) completes in
reasonable time, advanced in batches by the workers' hooks, with no per-step polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import anyio
import pytest
import workflow_helpers as h
from chancy_plugin_workflow import (
    Workflow,
    Workflows,
    WorkflowState,
    submit_workflow,
    wait_for_workflow,
)

from chancy_core import Chancy, Job, Queue, Worker

pytestmark = [pytest.mark.anyio, pytest.mark.db, pytest.mark.slow]

RunWorker = Callable[..., AbstractAsyncContextManager[Worker]]
WIDTH = 10_000


async def test_a_10000_step_fan_out_and_fan_in_completes(
    database: str, run_worker: RunWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = Workflow("wide")
    flow.add("root", Job.from_func(h.value, kwargs={"x": 1}))
    middle = [f"m{i}" for i in range(WIDTH)]
    for name in middle:
        flow.add(name, Job.from_func(h.noop), depends_on=["root"])
    flow.add("sink", Job.from_func(h.noop), depends_on=middle)
    # The sweeper is slow on purpose: everything must advance through the hooks.
    plugin = Workflows(sweep_interval=3600)
    async with Chancy(database, autoload_plugins=False, plugins=[plugin]) as app:
        await app.declare(Queue("default", concurrency=200, polling_interval=1.0))
        with anyio.fail_after(600):
            async with run_worker(app, completion_batch=200):
                started = time.monotonic()
                wid = await submit_workflow(app, flow)
                submitted = time.monotonic() - started
                info = await wait_for_workflow(app, wid, timeout=580)
                total = time.monotonic() - started
    with capsys.disabled():
        print(
            f"\n{len(flow)}-step workflow: submitted in {submitted:.2f}s, completed in"
            f" {total:.1f}s ({len(flow) / total:.0f} steps/s)"
        )
    assert info.state is WorkflowState.SUCCEEDED, info
    assert info.steps_done == len(flow) == WIDTH + 2
    assert info.steps["sink"].job_state is not None
    assert total < 300, f"{total:.0f}s is not reasonable"


async def test_a_chain_advances_without_waiting_for_any_poll(
    database: str, run_worker: RunWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    """200 steps one after the other, on a queue polled every 30 s and a sweeper every
    hour: each step is pushed by its parent's hook and wakes the worker at once."""
    length = 200
    flow = Workflow("chain")
    previous: list[str] = []
    for i in range(length):
        previous = [flow.add(f"s{i}", Job.from_func(h.noop), depends_on=previous)]
    plugin = Workflows(sweep_interval=3600)
    async with Chancy(database, autoload_plugins=False, plugins=[plugin]) as app:
        await app.declare(Queue("default", concurrency=4, polling_interval=30.0))
        with anyio.fail_after(120):
            async with run_worker(app):
                started = time.monotonic()
                wid = await submit_workflow(app, flow)
                info = await wait_for_workflow(app, wid, timeout=110, interval=0.5)
                total = time.monotonic() - started
    with capsys.disabled():
        print(f"\n{length}-step chain: {total:.1f}s, {1000 * total / length:.0f} ms per step")
    assert info.state is WorkflowState.SUCCEEDED
    assert total < 60, f"{total:.0f}s: steps waited for a poll"
