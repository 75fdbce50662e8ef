"""The dashboard in a real browser, against a real worker and database.

The tests run in file order and share one signed-in browser profile: the first signs in.
"""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Dialog, Page, expect

from chancy_core import Job, QueuedJob
from e2e import e2e_jobs
from e2e.e2e_helpers import PASSWORD, World, screenshot

pytestmark = [pytest.mark.db]

ID_URL = re.compile(r"/jobs/[0-9a-f-]{36}$")


def wait_state(world: World, job_id: str, state: str, timeout: float = 20.0) -> QueuedJob:
    deadline = time.monotonic() + timeout
    while True:
        job = world.app.sync_get_job(job_id)
        assert job is not None
        if job.state.value == state:
            return job
        assert time.monotonic() < deadline, f"job {job_id} is {job.state.value}, not {state}"
        time.sleep(0.1)


def queue_state(world: World, name: str) -> str:
    (stats,) = [s for s in world.app.sync_queue_stats() if s.name == name]
    assert stats.queue is not None
    return stats.queue.state.value


def test_sign_in(page: Page, world: World) -> None:
    page.goto("/jobs")
    expect(page).to_have_url(f"{world.base_url}/login?next=%2Fjobs")
    screenshot(page, "login")
    page.fill("input[name=password]", "not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".flash.error")).to_have_text("Wrong password.")
    page.fill("input[name=password]", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{world.base_url}/jobs")
    expect(page.locator("h1")).to_have_text("Jobs")


def test_retry_a_failed_job_and_see_it_succeed(page: Page, world: World) -> None:
    job = Job.from_func(e2e_jobs.flaky, kwargs={"marker": str(world.tmp / "flaky")})
    ref = world.app.sync_push(job)
    wait_state(world, ref.identifier, "failed")
    page.goto(f"/jobs/{ref}")
    expect(page.locator("#job-state")).to_have_text("failed")
    expect(page.locator("pre.traceback")).to_contain_text("ConnectionError")
    page.get_by_role("button", name="Retry", exact=True).click()
    expect(page.locator(".flash")).to_contain_text("will run again")
    # The page follows the job live (server-sent events) until it succeeds.
    expect(page.locator("#job-state")).to_have_text("succeeded", timeout=20_000)
    assert wait_state(world, ref.identifier, "succeeded").attempts == 2


def test_cancel_a_running_job(page: Page, world: World) -> None:
    ref = world.app.sync_push(Job.from_func(e2e_jobs.sleepy, kwargs={"seconds": 120}, queue="slow"))
    wait_state(world, ref.identifier, "running")
    page.goto(f"/jobs/{ref}")
    expect(page.locator("#job-state")).to_have_text("running")
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator(".flash")).to_contain_text("cancelled")
    expect(page.locator("#job-state")).to_have_text("failed", timeout=20_000)
    expect(page.locator("pre.traceback").last).to_contain_text("cancel")


def test_pause_a_queue_and_the_worker_stops_taking_its_jobs(page: Page, world: World) -> None:
    page.goto("/queues")
    page.locator("#queue-default").get_by_role("button", name="Pause").click()
    expect(page.locator(".flash")).to_contain_text("queue default paused")
    expect(page.locator("#queue-default .badge")).to_have_text("paused")
    assert queue_state(world, "default") == "paused"
    ref = world.app.sync_push(Job.from_func(e2e_jobs.quick, kwargs={"n": 1}))
    time.sleep(3)  # fifteen polling intervals of the queue
    wait_state(world, ref.identifier, "pending", timeout=0.1)
    page.goto(f"/jobs/{ref}")
    expect(page.locator("#job-state")).to_have_text("pending")
    page.goto("/queues")
    page.locator("#queue-default").get_by_role("button", name="Resume").click()
    expect(page.locator(".flash")).to_contain_text("queue default resumed")
    wait_state(world, ref.identifier, "succeeded")


def test_a_script_payload_stays_inert(page: Page, world: World) -> None:
    dialogs: list[str] = []

    def record(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", record)
    payload = (
        "<script>window.__pwned = 1; alert('xss')</script>"
        "<img src=x onerror=\"window.__pwned = 2; alert('img')\">"
    )
    ref = world.app.sync_push(Job.from_func(e2e_jobs.render, kwargs={"html": payload}))
    page.goto(f"/jobs/{ref}")
    expect(page.locator("#kwargs")).to_contain_text(
        "<script>window.__pwned = 1; alert('xss')</script>"
    )
    expect(page.locator("#kwargs")).to_contain_text("<img src=x onerror=")
    page.wait_for_timeout(1500)  # live updates swap the page's live part in meanwhile
    assert dialogs == []
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("main script, main img").count() == 0


def test_a_post_without_the_csrf_token_is_refused(page: Page, world: World) -> None:
    page.goto("/queues")
    status = page.evaluate(
        """async () => (await fetch('/queues/default/pause', {
            method: 'POST',
            headers: {'Content-Type': 'application/x-www-form-urlencoded'},
            body: 'confirm=yes',
        })).status"""
    )
    assert status == 403
    # The dashboard's own form, its token removed, submitted by the browser.
    page.evaluate(
        """() => {
            const form = [...document.querySelectorAll('#queue-default form')]
                .find(f => f.action.endsWith('/pause'));
            form.querySelector('input[name=csrf]').remove();
            form.submit();
        }"""
    )
    expect(page.locator("h1")).to_have_text("403")
    expect(page.locator("main")).to_contain_text("security token is missing")
    assert queue_state(world, "default") == "active"


def test_bulk_retry_asks_for_confirmation(page: Page, world: World) -> None:
    refs = world.app.sync_push_many(
        [Job.from_func(e2e_jobs.broken, kwargs={"reason": f"bulk {i}"}) for i in range(3)]
    )
    for ref in refs:
        wait_state(world, ref.identifier, "failed")
    page.goto("/jobs?state=failed&func=e2e.e2e_jobs.broken")
    expect(page.locator("table.jobs tbody tr")).to_have_count(3)
    page.get_by_role("button", name=re.compile("Retry every failed job")).click()
    expect(page.locator(".question")).to_contain_text("Retry 3 failed job(s)")
    screenshot(page, "bulk-retry")
    for ref in refs:
        assert wait_state(world, ref.identifier, "failed", timeout=0.1).attempts == 1
    page.get_by_role("button", name="Retry them").click()
    expect(page.locator(".flash")).to_contain_text("retried 3 failed job(s)")
    for ref in refs:  # they ran again (and failed again: the function always fails)
        deadline = time.monotonic() + 20
        while (job := world.app.sync_get_job(ref)) is not None and job.attempts < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_push_a_job_for_an_allowed_function(page: Page, world: World) -> None:
    page.goto("/push")
    page.select_option("select[name=func]", "e2e.e2e_jobs.quick")
    page.fill("textarea[name=kwargs]", '{"n": 21}')
    screenshot(page, "push")
    page.get_by_role("button", name="Push").click()
    expect(page).to_have_url(ID_URL)
    expect(page.locator("#job-state")).to_have_text("succeeded", timeout=20_000)
    expect(page.locator("#kwargs")).to_contain_text('"n": 21')


def test_cron_schedules_add_and_run_now(page: Page, world: World) -> None:
    page.goto("/cron")
    page.fill("input[name=name]", "nightly-report")
    page.fill("input[name=cron]", "0 3 * * *")
    page.fill("input[name=timezone]", "Europe/Paris")
    page.select_option("select[name=func]", "e2e.e2e_jobs.render")
    page.fill("textarea[name=kwargs]", '{"html": "nightly"}')
    page.get_by_role("button", name="Save schedule").click()
    expect(page.locator(".flash")).to_contain_text("schedule nightly-report saved")
    row = page.locator("#schedule-nightly-report")
    expect(row).to_contain_text("Europe/Paris")
    row.get_by_role("button", name="Run now").click()
    expect(page.locator(".flash")).to_contain_text("pushed job")
    (job,) = world.app.sync_list_jobs(func="e2e.e2e_jobs.render", queue="reports").jobs
    assert job.kwargs == {"html": "nightly"}


def test_a_workflow_its_graph_links_to_jobs_and_cancel_it(page: Page, world: World) -> None:
    from chancy_plugin_workflow import (
        Workflow,
        sync_get_workflow,
        sync_submit_workflow,
        sync_wait_for_workflow,
    )

    nightly = Workflow("nightly report")
    nightly.add("fetch-orders", Job.from_func(e2e_jobs.quick, kwargs={"n": 1}))
    nightly.add("fetch-refunds", Job.from_func(e2e_jobs.quick, kwargs={"n": 2}))
    nightly.add(
        "merge",
        Job.from_func(e2e_jobs.quick, kwargs={"n": 3}),
        depends_on=["fetch-orders", "fetch-refunds"],
    )
    nightly.add("publish", Job.from_func(e2e_jobs.quick, kwargs={"n": 4}), depends_on=["merge"])
    nightly.add("notify", Job.from_func(e2e_jobs.quick, kwargs={"n": 5}), depends_on=["merge"])
    done_id = sync_submit_workflow(world.app, nightly)
    assert sync_wait_for_workflow(world.app, done_id, timeout=30).state.value == "succeeded"
    backfill = Workflow("backfill")
    backfill.add("load", Job.from_func(e2e_jobs.sleepy, kwargs={"seconds": 120}, queue="slow"))
    backfill.add("index", Job.from_func(e2e_jobs.quick, kwargs={"n": 6}), depends_on=["load"])
    held_id = sync_submit_workflow(world.app, backfill)

    page.goto("/workflows")
    expect(page.locator(f"#workflow-{done_id} .badge")).to_have_text("succeeded")
    expect(page.locator(f"#workflow-{held_id} .badge")).to_have_text("running")
    screenshot(page, "workflows")
    page.locator(f"#workflow-{done_id} a").click()
    expect(page.locator("h1")).to_have_text("Workflow nightly report")
    expect(page.locator("svg.workflow-graph g.node.succeeded")).to_have_count(5)
    expect(page.locator("table.steps tbody tr")).to_have_count(5)
    screenshot(page, "workflow")
    merge = sync_get_workflow(world.app, done_id).steps["merge"].job
    assert merge is not None
    page.locator('svg.workflow-graph [data-step="merge"]').click()  # a node opens its job
    expect(page).to_have_url(f"{world.base_url}/jobs/{merge.identifier}")
    expect(page.locator("#job-state")).to_have_text("succeeded")
    page.locator("#job-workflow").click()  # and the job leads back to its workflow
    page.locator("#step-publish a.step-state").click()  # a step's state opens its job too
    expect(page).to_have_url(ID_URL)
    expect(page.locator("#kwargs")).to_contain_text('"n": 4')

    page.goto(f"/workflows/{held_id}")
    page.get_by_role("button", name="Cancel workflow…").click()
    expect(page.locator(".question")).to_contain_text("Cancel workflow 'backfill'")
    page.get_by_role("button", name="Cancel the workflow").click()
    expect(page.locator(".flash")).to_contain_text(f"workflow {held_id} cancelled")
    expect(page.locator("#workflow-state")).to_have_text("cancelled")
    assert sync_get_workflow(world.app, held_id).state.value == "cancelled"
    expect(page.get_by_role("button", name="Cancel workflow…")).to_have_count(0)


def test_every_page_opens(page: Page, world: World) -> None:
    running = world.app.sync_push(
        Job.from_func(e2e_jobs.sleepy, kwargs={"seconds": 30}, queue="slow")
    )
    wait_state(world, running.identifier, "running")
    failed = world.app.sync_list_jobs(state="failed", func="e2e.e2e_jobs.broken", limit=1).jobs[0]
    pages = [
        ("/", "overview", "Overview"),
        ("/jobs", "jobs", "Jobs"),
        (f"/jobs/{failed.id}", "job", "Job "),
        ("/queues", "queues", "Queues"),
        ("/workers", "workers", "Workers"),
        ("/cron", "cron", "Cron schedules"),
        ("/charts", "charts", "Charts"),
        ("/push", "push", "Push a job"),
    ]
    for path, name, heading in pages:
        answer = page.goto(path)
        assert answer is not None and answer.status == 200, path
        expect(page.locator("h1")).to_contain_text(heading)
        if name == "overview":
            expect(page.locator("main")).to_contain_text("Leader: e2e-worker")
            expect(page.locator("main")).to_contain_text("e2e-worker")
        if name == "charts":  # the metrics plugin writes its history every few seconds
            deadline = time.monotonic() + 30
            while page.locator("svg.chart polyline").count() == 0:
                assert time.monotonic() < deadline, "the charts stayed empty"
                page.wait_for_timeout(1000)
                page.reload()
        if name == "workers":
            expect(page.locator("main")).to_contain_text(running.identifier[-12:])
        screenshot(page, name)
    metrics = page.goto("/metrics")  # the metrics plugin's endpoint, behind the login
    assert metrics is not None and metrics.status == 200
    assert "chancy_queue_depth" in metrics.text()
    world.app.sync_cancel_job(running)
