"""The workflow pages (with chancy-plugin-workflow): list, one workflow's steps as a graph
and a table linking to their jobs, cancel; hidden without the plugin.

`nox -s "plugin(chancy-plugin-dashboard)"` installs the workflow plugin with the
dashboard (``[tool.chancy] test-plugins``), so these tests always run with it; the
"hidden" test builds an app without it (``autoload_plugins=False``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import anyio
import httpx
import pytest
from chancy_plugin_dashboard import Dashboard
from chancy_plugin_dashboard.graph import MAX_GRAPH_STEPS, GraphStep, layers, step_graph
from chancy_plugin_workflow import (
    StepState,
    Workflow,
    WorkflowState,
    get_workflow,
    submit_workflow,
    wait_for_workflow,
)
from dashboard_helpers import PASSWORD_HASH, SECRET, MakeDashboard, client_for, csrf_of, login

from chancy_core import Chancy, Job, QueuedJob, Worker

pytestmark = [pytest.mark.anyio, pytest.mark.db]

RunWorker = Callable[..., AbstractAsyncContextManager[Worker]]
NASTY = "<script>alert('wf')</script>"


def double(n: int) -> int:
    """A step: returns twice its argument."""
    return n * 2


async def token(client: httpx.AsyncClient) -> str:
    return csrf_of((await client.get("/workers")).text)


async def two_workflows(app: Chancy, run_worker: RunWorker) -> tuple[str, str]:
    """A finished workflow (a, b -> report) and a running one whose first step waits on
    the paused ``emails`` queue (so its second step waits for it)."""
    done = Workflow("nightly " + NASTY)
    done.add("a", Job.from_func(double, kwargs={"n": 1}))
    done.add("b", Job.from_func(double, kwargs={"n": 2}))
    done.add("report", Job.from_func(double, kwargs={"n": 3}), depends_on=["a", "b"])
    await app.pause_queue("emails")
    held = Workflow("held")
    held.add("first", Job.from_func(double, kwargs={"n": 4}, queue="emails"))
    held.add("second", Job.from_func(double, kwargs={"n": 5}), depends_on=["first"])
    with anyio.fail_after(30):
        async with run_worker(app, heartbeat_interval=0.5):
            done_id = await submit_workflow(app, done)
            held_id = await submit_workflow(app, held)
            finished = await wait_for_workflow(app, done_id, timeout=25, interval=0.1)
    assert finished.state is WorkflowState.SUCCEEDED
    return done_id, held_id


async def test_the_workflow_pages_are_hidden_without_the_plugin(database: str) -> None:
    async with Chancy(database, autoload_plugins=False) as app:
        assert not app.plugins.has_plugin("workflow")
        dashboard = Dashboard(app, password_hash=PASSWORD_HASH, secret_key=SECRET)
        async with client_for(dashboard) as client:
            await login(client)
            overview = await client.get("/")
            assert overview.status_code == 200 and "/workflows" not in overview.text
            assert (await client.get("/workflows")).status_code == 404
            wid = "0" * 8 + "-0000-0000-0000-" + "0" * 12
            assert (await client.get(f"/workflows/{wid}")).status_code == 404
            posted = await client.post(
                f"/workflows/{wid}/cancel", data={"csrf": await token(client), "confirm": "yes"}
            )
            assert posted.status_code == 404


async def test_workflows_are_listed_with_their_state(
    app: Chancy, signed_in: httpx.AsyncClient, run_worker: RunWorker
) -> None:
    done_id, held_id = await two_workflows(app, run_worker)
    overview = await signed_in.get("/")
    assert 'href="/workflows"' in overview.text  # in the navigation
    page = await signed_in.get("/workflows")
    assert page.status_code == 200
    rows = re.findall(r'<tr id="workflow-([0-9a-f-]{36})">(.*?)</tr>', page.text, re.S)
    assert [wid for wid, _ in rows] == [held_id, done_id]  # newest first
    by_id = dict(rows)
    assert 'class="badge running"' in by_id[held_id] and "0/2" in by_id[held_id]
    assert 'class="badge succeeded"' in by_id[done_id] and "3/3" in by_id[done_id]
    assert NASTY not in page.text
    assert "nightly &lt;script&gt;alert(&#39;wf&#39;)&lt;/script&gt;" in page.text
    running = await signed_in.get("/workflows", params={"state": "running"})
    assert held_id in running.text and done_id not in running.text
    wrong = await signed_in.get("/workflows", params={"state": "<b>bogus</b>"})
    assert wrong.status_code == 200 and "unknown state" in wrong.text
    assert "<b>bogus</b>" not in wrong.text and "&lt;b&gt;bogus&lt;/b&gt;" in wrong.text


async def test_workflows_are_paged_newest_first(app: Chancy, signed_in: httpx.AsyncClient) -> None:
    from chancy_plugin_dashboard import views

    ids = []
    for n in range(views.PAGE_SIZE + 3):
        flow = Workflow(f"flow {n}")
        flow.add("only", Job.from_func(double, kwargs={"n": n}, queue="emails"))
        ids.append(await submit_workflow(app, flow))
    first = await signed_in.get("/workflows")
    shown = re.findall(r'<tr id="workflow-([0-9a-f-]{36})">', first.text)
    assert len(shown) == views.PAGE_SIZE and set(shown) <= set(ids)
    older = re.search(r'href="(/workflows\?after=[^"]+)" rel="next"', first.text)
    assert older is not None
    second = await signed_in.get(older.group(1).replace("&amp;", "&"))
    rest = re.findall(r'<tr id="workflow-([0-9a-f-]{36})">', second.text)
    assert len(rest) == 3 and not set(rest) & set(shown) and set(rest) | set(shown) == set(ids)
    assert "« Newest" in second.text and 'rel="next"' not in second.text


async def test_a_workflow_shows_its_steps_linking_to_their_jobs(
    app: Chancy, signed_in: httpx.AsyncClient, run_worker: RunWorker
) -> None:
    done_id, held_id = await two_workflows(app, run_worker)
    info = await get_workflow(app, done_id)
    page = await signed_in.get(f"/workflows/{done_id}")
    assert page.status_code == 200
    assert NASTY not in page.text and "&lt;script&gt;" in page.text
    assert 'id="workflow-state"><span class="badge succeeded">' in page.text
    for name in ("a", "b", "report"):
        step = info.steps[name]
        assert step.job is not None
        row = re.search(rf'<tr id="step-{name}">(.*?)</tr>', page.text, re.S)
        assert row is not None, name
        # The step's state links to its job's page.
        assert (
            f'<a href="/jobs/{step.job.identifier}" class="step-state">'
            '<span class="badge succeeded">succeeded</span></a>'
        ) in row.group(1)
        # The graph: one node per step, linking to the job, coloured by state.
        assert (
            f'<a href="/jobs/{step.job.identifier}"><g class="node succeeded" data-step="{name}">'
        ) in page.text
    assert page.text.count('<path class="edge"') == 2  # a -> report, b -> report
    assert "data-events" not in page.text  # finished: nothing live to follow
    # The job page names its workflow and step.
    job_page = await signed_in.get(f"/jobs/{info.steps['report'].job.identifier}")  # type: ignore[union-attr]
    assert f'href="/workflows/{done_id}" id="job-workflow">step report of' in job_page.text

    held = await signed_in.get(f"/workflows/{held_id}")
    assert f"/events?view=workflow&amp;id={held_id}" in held.text  # running: followed live
    assert re.search(r'<tr id="step-second">.*?badge waiting.*?not pushed', held.text, re.S)
    only_waiting = await signed_in.get(f"/workflows/{held_id}", params={"step_state": "waiting"})
    assert 'id="step-second"' in only_waiting.text and 'id="step-first"' not in only_waiting.text

    for missing in ("00000000-0000-0000-0000-000000000000", "not-a-uuid", "<b>"):
        assert (await signed_in.get(f"/workflows/{missing}")).status_code == 404


async def test_the_live_part_of_a_running_workflow_streams(
    app: Chancy, make_dashboard: MakeDashboard
) -> None:
    flow = Workflow("streamed")
    flow.add("only", Job.from_func(double, kwargs={"n": 1}, queue="emails"))
    wid = await submit_workflow(app, flow)
    dashboard = make_dashboard(live_interval=0.1, events_max_seconds=0.5)
    async with client_for(dashboard) as client:
        await login(client)
        with anyio.fail_after(10):
            stream = await client.get("/events", params={"view": "workflow", "id": wid})
            gone = await client.get(
                "/events", params={"view": "workflow", "id": "00000000-0000-0000-0000-000000000000"}
            )
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.text.count("event: update") == 1 and 'data-step="only"' in stream.text
    assert "event: update" not in gone.text  # an unknown workflow ends the stream


async def test_cancel_a_workflow_with_a_confirmation_and_the_csrf_token(
    app: Chancy, signed_in: httpx.AsyncClient, run_worker: RunWorker
) -> None:
    done_id, held_id = await two_workflows(app, run_worker)
    before = await get_workflow(app, held_id)
    first_job = before.steps["first"].job
    assert first_job is not None
    # Without the token (or with another's), nothing happens.
    for data in ({"confirm": "yes"}, {"confirm": "yes", "csrf": "x" * 43}):
        refused = await signed_in.post(f"/workflows/{held_id}/cancel", data=data)
        assert refused.status_code == 403
    assert (await signed_in.get(f"/workflows/{held_id}/cancel")).status_code == 405
    assert (await get_workflow(app, held_id)).state is WorkflowState.RUNNING
    # The button leads to a confirmation page, which does the cancelling.
    page = await signed_in.get(f"/workflows/{held_id}")
    assert f'action="/workflows/{held_id}/cancel"' in page.text
    confirm = await signed_in.post(
        f"/workflows/{held_id}/cancel", data={"csrf": csrf_of(page.text)}
    )
    assert confirm.status_code == 200 and "Cancel workflow &#39;held&#39;" in confirm.text
    assert (await get_workflow(app, held_id)).state is WorkflowState.RUNNING
    done = await signed_in.post(
        f"/workflows/{held_id}/cancel", data={"csrf": csrf_of(confirm.text), "confirm": "yes"}
    )
    assert done.status_code == 303 and done.headers["location"] == f"/workflows/{held_id}"
    after = await signed_in.get(done.headers["location"])
    assert f"workflow {held_id} cancelled" in after.text
    info = await get_workflow(app, held_id)
    assert info.state is WorkflowState.CANCELLED
    assert {s.state for s in info.steps.values()} == {StepState.CANCELLED}
    job = await app.get_job(first_job)
    assert job is not None and job.state is QueuedJob.State.FAILED  # a pending job, cancelled
    assert "Cancel workflow" not in after.text  # finished: no button
    # A finished workflow is not cancelled again.
    again = await signed_in.post(
        f"/workflows/{done_id}/cancel", data={"csrf": csrf_of(after.text), "confirm": "yes"}
    )
    assert (
        "has already finished: nothing to cancel"
        in (await signed_in.get(again.headers["location"])).text
    )
    assert (await get_workflow(app, done_id)).state is WorkflowState.SUCCEEDED


async def test_read_only_shows_workflows_and_cancels_nothing(
    app: Chancy, make_dashboard: MakeDashboard
) -> None:
    flow = Workflow("kept")
    flow.add("only", Job.from_func(double, kwargs={"n": 1}, queue="emails"))
    wid = await submit_workflow(app, flow)
    async with client_for(make_dashboard(read_only=True)) as client:
        await login(client)
        page = await client.get(f"/workflows/{wid}")
        assert page.status_code == 200 and "Cancel workflow" not in page.text
        refused = await client.post(
            f"/workflows/{wid}/cancel", data={"csrf": csrf_of(page.text), "confirm": "yes"}
        )
        assert refused.status_code == 403
    assert (await get_workflow(app, wid)).state is WorkflowState.RUNNING


# --- the graph's layout -----------------------------------------------------------------------


def test_layers_put_each_step_right_of_its_deepest_dependency() -> None:
    steps = {
        "fetch": (),
        "parse": ("fetch",),
        "audit": (),
        "report": ("parse", "audit"),
        "mail": ("report",),
    }
    assert layers(steps) == [["audit", "fetch"], ["parse"], ["report"], ["mail"]]
    assert layers({}) == []
    assert layers({"a": ("b",), "b": ("a",)}) == [["a", "b"]]  # a cycle does not hang


def test_the_graph_escapes_and_links_and_stops_at_its_limit() -> None:
    steps = [
        GraphStep(name="a", state="succeeded", depends_on=(), job_id="j1"),
        GraphStep(name='b"><script>', state="waiting", depends_on=("a",), job_id=None),
    ]
    svg = step_graph(steps, base="/admin/jobs")
    assert svg is not None
    assert '<a href="/admin/jobs/jobs/j1"><g class="node succeeded" data-step="a">' in svg
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "&#34;&gt;" in svg
    assert svg.count('<path class="edge"') == 1
    many = [GraphStep(f"s{n}", "waiting", (), None) for n in range(MAX_GRAPH_STEPS + 1)]
    assert step_graph(many, base="") is None
    assert step_graph([], base="") is None
