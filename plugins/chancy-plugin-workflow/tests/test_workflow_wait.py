"""wait_for_workflow and its sync twin prove their LISTEN connection alive: a connection
that silently stops delivering (black-holed by a TCP proxy, nothing closed or reset) is
noticed by its own ping not coming back, and replaced."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import anyio
import pytest
import workflow_helpers as h
from chancy_plugin_workflow import (
    Workflow,
    WorkflowState,
    cancel_workflow,
    submit_workflow,
    sync_wait_for_workflow,
    wait_for_workflow,
)
from psycopg.conninfo import conninfo_to_dict

from chancy_core import Chancy, Job

pytestmark = [pytest.mark.anyio, pytest.mark.db]

# The repository's TCP proxy that black-holes chosen connections (chaos/netproxy.py; the
# core's chaos suite uses it on the worker's listener).
REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from chaos.netproxy import NetProxy  # noqa: E402


async def wait_until(what: str, check: object, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {seconds} s")
        await anyio.sleep(0.05)


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_a_frozen_listen_connection_is_replaced(
    chancy: Chancy, database: str, sync: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="chancy_plugin_workflow")
    flow = Workflow("never runs")
    flow.add("a", Job.from_func(h.noop, queue="default"))  # no worker: stays queued
    wid = await submit_workflow(chancy, flow)
    info = conninfo_to_dict(database)
    with NetProxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)) as proxy:
        async with Chancy(proxy.dsn(database), autoload_plugins=False, call_timeout=2) as app:
            # Polls far apart and a long timeout: only a notification ends this wait in
            # time, so it must come through a connection that works.
            kwargs = {"timeout": 120.0, "interval": 600.0, "ping_interval": 0.3}
            results: list[object] = []

            async def waiter() -> None:
                if sync:
                    found = await anyio.to_thread.run_sync(
                        lambda: sync_wait_for_workflow(app, wid, **kwargs)
                    )
                else:
                    found = await wait_for_workflow(app, wid, **kwargs)
                results.append(found)

            with anyio.fail_after(150):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(waiter)
                    await wait_until("the waiter's LISTEN", lambda: proxy.listeners())
                    (frozen,) = proxy.hole(proxy.listeners())
                    # Its ping does not come back: the waiter connects and LISTENs again.
                    await wait_until(
                        "a new LISTEN connection",
                        lambda: any(c is not frozen for c in proxy.listeners()),
                    )
                    assert await cancel_workflow(chancy, wid)  # notifies, on another app
        (done,) = results
    assert done.state is WorkflowState.CANCELLED  # type: ignore[attr-defined]
    assert any("ListenerStalled" in r.getMessage() for r in caplog.records), caplog.text
