"""The plugin is discovered through its entry point, and works."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from importlib.metadata import entry_points

import anyio
import pytest
from chancy_plugin_example import Example

from chancy_core import Chancy, Job, Queue, Worker

pytestmark = [pytest.mark.anyio, pytest.mark.db]


async def hello(name: str) -> str:
    return f"hello, {name}"


async def test_discovered_through_its_entry_point_and_records_where_jobs_ran(
    chancy: Chancy, run_worker: Callable[..., AbstractAsyncContextManager[Worker]]
) -> None:
    (entry,) = [ep for ep in entry_points(group="chancy") if ep.name == "example"]
    assert entry.load() is Example
    plugin = chancy.plugins.get_plugin("example")  # Chancy(dsn) loaded it: nobody passed it
    assert isinstance(plugin, Example)

    await chancy.declare(Queue("default"))
    with anyio.fail_after(20):
        async with run_worker(chancy, worker_id="w1"):
            ref = await chancy.push(Job.from_func(hello, kwargs={"name": "ada"}))
            job = await chancy.wait_for_job(ref, timeout=10)
            while plugin.outcomes != {"succeeded": 1}:  # reported just after the write
                await anyio.sleep(0.01)
    assert job.state is job.State.SUCCEEDED
    assert job.meta["example"] == {"pushed_from": plugin.host, "ran_on": "w1"}
