"""The dashboard's pages and actions against a real database and a real worker."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from dashboard_helpers import MakeDashboard, client_for, csrf_of, login

from chancy_core import Chancy, Job, QueuedJob, Worker

pytestmark = [pytest.mark.anyio, pytest.mark.db]

RunWorker = Callable[..., AbstractAsyncContextManager[Worker]]
JOB_LINK = re.compile(r'href="/jobs/([0-9a-f-]{36})"')


async def flaky(marker: str) -> str:
    """Fails the first time (creating ``marker``), succeeds after."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise ValueError("the first attempt always fails <b>here</b>")
    return "second time lucky"


async def sleepy(seconds: float) -> None:
    """Sleeps (to be cancelled)."""
    await anyio.sleep(seconds)


def quick() -> str:
    """Returns at once."""
    return "done"


async def token(client: httpx.AsyncClient) -> str:
    return csrf_of((await client.get("/workers")).text)


async def post(client: httpx.AsyncClient, path: str, **data: str) -> httpx.Response:
    """POST a form with the session's CSRF token; follows the redirect to the next page."""
    answer = await client.post(path, data={"csrf": await token(client), **data})
    assert answer.status_code in (200, 303), (path, answer.status_code, answer.text[:500])
    if answer.status_code == 303:
        return await client.get(answer.headers["location"])
    return answer


async def wait_for_state(app: Chancy, job_id: str, state: QueuedJob.State) -> QueuedJob:
    with anyio.fail_after(15):
        while True:
            found = await app.get_job(job_id)
            assert found is not None
            if found.state is state:
                return found
            await anyio.sleep(0.05)


# --- reading ----------------------------------------------------------------------------------


async def test_overview_shows_depths_oldest_waiting_and_workers(
    app: Chancy, signed_in: httpx.AsyncClient, run_worker: RunWorker
) -> None:
    await app.pause_queue("emails")
    for _ in range(3):
        await app.push(Job(func="myapp.tasks.send", queue="emails"))
    async with run_worker(app, heartbeat_interval=0.5, worker_id="worker-one"):
        with anyio.fail_after(10):
            while not await app.list_workers():
                await anyio.sleep(0.05)
        page = await signed_in.get("/")
        workers = await signed_in.get("/workers")
    assert page.status_code == 200
    row = page.text.split('href="/jobs?queue=emails"', 1)[1].split("</tr>", 1)[0]
    assert 'href="/jobs?queue=emails&amp;state=pending">3<' in row
    assert "paused" in row and "since 20" in row  # the oldest waiting job's time
    assert "worker-one" in page.text and "ago" in page.text
    assert "worker-one" in workers.text and "hostname:" in workers.text


async def test_jobs_filter_by_queue_state_function_and_time(
    app: Chancy, signed_in: httpx.AsyncClient
) -> None:
    a = [await app.push(Job(func="myapp.tasks.a", queue="default")) for _ in range(3)]
    b = [await app.push(Job(func="myapp.tasks.b", queue="emails")) for _ in range(2)]
    await app.cancel_job(b[0])

    async def ids(**params: Any) -> set[str]:
        page = await signed_in.get("/jobs", params=params)
        assert page.status_code == 200
        return set(JOB_LINK.findall(page.text))

    everything = {r.identifier for r in a + b}
    assert await ids() == everything
    assert await ids(queue="emails") == {r.identifier for r in b}
    assert await ids(func="myapp.tasks.a") == {r.identifier for r in a}
    assert await ids(state="failed") == {b[0].identifier}
    assert await ids(state=["failed", "pending"]) == everything
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert await ids(since=later) == set()
    assert await ids(until=later) == everything
    wrong = await signed_in.get("/jobs", params={"state": "lost", "since": "yesterday"})
    assert wrong.status_code == 200 and "unknown state" in wrong.text


async def test_jobs_pages_by_keyset_cursor(app: Chancy, signed_in: httpx.AsyncClient) -> None:
    pushed = await app.push_many(
        [Job(func="myapp.tasks.many", kwargs={"i": i}) for i in range(120)]
    )
    seen: list[str] = []
    path = "/jobs?func=myapp.tasks.many"
    for _ in range(5):
        page = await signed_in.get(path)
        found = JOB_LINK.findall(page.text)
        assert len(found) <= 50
        seen += found
        older = re.search(r'href="(/jobs\?[^"]*cursor=[^"]*)" rel="next"', page.text)
        if older is None:
            break
        path = older.group(1).replace("&amp;", "&")
    assert len(seen) == 120 and set(seen) == {r.identifier for r in pushed}


async def test_a_job_shows_its_arguments_meta_attempts_and_timeline(
    app: Chancy, signed_in: httpx.AsyncClient, run_worker: RunWorker
) -> None:
    marker = Path(tempfile.mkdtemp()) / "never"
    job = Job.from_func(flaky, kwargs={"marker": str(marker)}, max_attempts=1).with_meta(
        {"team": "billing"}
    )
    with anyio.fail_after(15):
        async with run_worker(app, heartbeat_interval=0.5):
            ref = await app.push(job)
            await app.wait_for_job(ref, interval=0.1)
    page = await signed_in.get(f"/jobs/{ref}")
    assert page.status_code == 200
    assert "test_dashboard_pages.flaky" in page.text and str(marker) in page.text
    assert "billing" in page.text
    assert "Attempt 1" in page.text and "ValueError" in page.text
    assert "&lt;b&gt;here&lt;/b&gt;" in page.text  # the traceback, escaped
    assert "scheduled to run" in page.text and "attempt 1 started" in page.text
    assert 'action="/jobs/' + ref.identifier + '/retry"' in page.text


# --- acting on jobs ---------------------------------------------------------------------------


async def test_retry_a_failed_job_and_it_succeeds(
    app: Chancy, signed_in: httpx.AsyncClient, run_worker: RunWorker
) -> None:
    marker = Path(tempfile.mkdtemp()) / "flaky"
    async with run_worker(app, heartbeat_interval=0.5):
        ref = await app.push(Job.from_func(flaky, kwargs={"marker": str(marker)}))
        failed = await wait_for_state(app, ref.identifier, QueuedJob.State.FAILED)
        assert failed.attempts == 1
        shown = await post(signed_in, f"/jobs/{ref}/retry")
        assert "will run again" in shown.text
        done = await wait_for_state(app, ref.identifier, QueuedJob.State.SUCCEEDED)
    assert done.attempts == 2 and len(done.errors) == 1  # the first error is kept
    again = await post(signed_in, f"/jobs/{ref}/cancel")
    assert "already finished" in again.text  # an action that does not apply says so


async def test_cancel_a_running_job(
    app: Chancy, signed_in: httpx.AsyncClient, run_worker: RunWorker
) -> None:
    async with run_worker(app, heartbeat_interval=0.5):
        ref = await app.push(Job.from_func(sleepy, kwargs={"seconds": 60}))
        await wait_for_state(app, ref.identifier, QueuedJob.State.RUNNING)
        running = await signed_in.get("/workers")
        assert f'href="/jobs/{ref}"' in running.text  # the worker's running job
        await post(signed_in, f"/jobs/{ref}/cancel")
        cancelled = await wait_for_state(app, ref.identifier, QueuedJob.State.FAILED)
    assert "cancel" in cancelled.errors[-1]["traceback"].lower()


async def test_requeue_and_delete_a_waiting_job(app: Chancy, signed_in: httpx.AsyncClient) -> None:
    ref = await app.push(
        Job(func="myapp.tasks.send", scheduled_at=datetime.now(UTC) + timedelta(days=1))
    )
    shown = await post(signed_in, f"/jobs/{ref}/requeue", queue="emails")
    assert "requeued on emails" in shown.text
    moved = await app.get_job(ref)
    assert moved is not None and moved.queue == "emails"
    assert moved.scheduled_at <= datetime.now(UTC)

    confirm = await post(signed_in, f"/jobs/{ref}/delete")
    assert "cannot be undone" in confirm.text and await app.get_job(ref) is not None
    done = await post(signed_in, f"/jobs/{ref}/delete", confirm="yes")
    assert "deleted" in done.text and await app.get_job(ref) is None


async def test_bulk_retry_asks_for_confirmation_first(
    app: Chancy, signed_in: httpx.AsyncClient
) -> None:
    mine = [await app.push(Job(func="myapp.tasks.bulk", queue="emails")) for _ in range(3)]
    other = await app.push(Job(func="myapp.tasks.bulk", queue="default"))
    for ref in [*mine, other]:
        await app.cancel_job(ref)
    confirm = await post(signed_in, "/jobs/retry", queue="emails", func="")
    assert "Retry 3 failed job(s)" in confirm.text
    assert {j.state for j in await app.get_jobs(mine) if j} == {QueuedJob.State.FAILED}
    done = await post(signed_in, "/jobs/retry", queue="emails", confirm="yes")
    assert "retried 3 failed job(s)" in done.text
    assert {j.state for j in await app.get_jobs(mine) if j} == {QueuedJob.State.PENDING}
    assert (await app.get_job(other)).state is QueuedJob.State.FAILED  # type: ignore[union-attr]


# --- queues ---------------------------------------------------------------------------------------


async def test_pause_resume_and_change_a_queue(
    app: Chancy, signed_in: httpx.AsyncClient, run_worker: RunWorker
) -> None:
    async with run_worker(app, heartbeat_interval=0.5):
        shown = await post(signed_in, "/queues/default/pause")
        assert "queue default paused" in shown.text
        ref = await app.push(Job.from_func(quick))
        await anyio.sleep(1.0)  # twenty polling intervals
        waiting = await app.get_job(ref)
        assert waiting is not None and waiting.state is QueuedJob.State.PENDING
        await post(signed_in, "/queues/default/resume")
        await wait_for_state(app, ref.identifier, QueuedJob.State.SUCCEEDED)

    shown = await post(signed_in, "/queues/emails/pause", minutes="30")
    assert "queue emails paused until " in shown.text
    (stats,) = [s for s in await app.queue_stats() if s.name == "emails"]
    assert stats.resume_at is not None
    assert timedelta(minutes=29) < stats.resume_at - datetime.now(UTC) <= timedelta(minutes=30)
    assert "until " in (await signed_in.get("/queues")).text
    await post(signed_in, "/queues/emails/resume")
    shown = await post(signed_in, "/queues/emails/update", concurrency="7")
    assert "concurrency 7" in shown.text
    shown = await post(signed_in, "/queues/emails/update", rate_limit="10", rate_limit_window="60")
    assert "rate limit 10/60s" in shown.text
    queue = await app.get_queue("emails")
    assert queue is not None and (queue.concurrency, queue.rate_limit) == (7, 10)
    shown = await post(signed_in, "/queues/emails/update", clear_rate_limit="1")
    assert "rate limit none" in shown.text
    bad = await post(signed_in, "/queues/emails/update", concurrency="0")
    assert "concurrency must be" in bad.text
    missing = await post(signed_in, "/queues/nowhere/pause")
    assert "no queue named" in missing.text
    page = await signed_in.get("/queues")
    assert 'action="/queues/emails/update"' in page.text


# --- pushing --------------------------------------------------------------------------------------


async def test_push_only_allowed_functions(app: Chancy, make_dashboard: MakeDashboard) -> None:
    dashboard = make_dashboard(allowed_functions=[Job(func="myapp.tasks.send", queue="emails")])
    async with client_for(dashboard) as client:
        await login(client)
        form = await client.get("/push")
        assert form.status_code == 200 and "myapp.tasks.send" in form.text
        shown = await post(client, "/push", func="myapp.tasks.send", kwargs='{"to": "b@x.org"}')
        job_id = JOB_LINK.search('href="' + shown.url.path + '"')
        assert job_id is not None
        pushed = await app.get_job(job_id.group(1))
        assert pushed is not None and pushed.kwargs == {"to": "b@x.org"}
        assert pushed.queue == "emails"
        refused = await post(client, "/push", func="os.system", kwargs='{"command": "id"}')
        assert "not one of the functions" in refused.text
        refused = await post(client, "/push", func="myapp.tasks.send", kwargs="[1]")
        assert "must be a JSON object" in refused.text
        refused = await post(client, "/push", func="myapp.tasks.send", kwargs="{")
        assert "not valid JSON" in refused.text
    assert (await app.list_jobs()).jobs == [pushed]
    async with client_for(make_dashboard()) as client:
        await login(client)
        assert (await client.get("/push")).status_code == 404
        assert "Push a job" not in (await client.get("/")).text


# --- live updates ---------------------------------------------------------------------------------


async def test_live_updates_stream_the_page_as_it_changes(
    app: Chancy, make_dashboard: MakeDashboard
) -> None:
    ref = await app.push(Job(func="myapp.tasks.send"))
    dashboard = make_dashboard(live_interval=0.1, events_max_seconds=0.6)
    async with client_for(dashboard) as client:
        await login(client)
        with anyio.fail_after(10):
            overview = await client.get("/events", params={"view": "overview"})
            job = await client.get("/events", params={"view": "job", "id": ref.identifier})
    assert overview.headers["content-type"].startswith("text/event-stream")
    assert "event: update\ndata: " in overview.text and "default" in overview.text
    # Sent again only when it changes (the overview's ages change every second; a
    # waiting job's page does not).
    assert job.text.count("event: update") == 1 and "myapp.tasks.send" in job.text
    async with client_for(dashboard) as client:
        await login(client)
        assert (await client.get("/events", params={"view": "nothing"})).status_code == 404


# --- the optional plugins' pages ------------------------------------------------------------------


async def test_cron_page_when_the_cron_plugin_is_installed(
    app: Chancy, make_dashboard: MakeDashboard
) -> None:
    dashboard = make_dashboard(allowed_functions=["myapp.tasks.digest"])
    async with client_for(dashboard) as client:
        await login(client)
        page = await client.get("/cron")
        if not app.plugins.has_plugin("cron"):
            assert page.status_code == 404 and 'href="/cron"' not in (await client.get("/")).text
            return
        assert page.status_code == 200
        shown = await post(
            client, "/cron/add", name="digest", cron="0 7 * * *", func="myapp.tasks.digest",
            kwargs='{"n": 1}', timezone="Europe/Paris",
        )  # fmt: skip
        assert "schedule digest saved" in shown.text and "0 7 * * *" in shown.text
        refused = await post(client, "/cron/add", name="evil", cron="* * * * *", func="os.system")
        assert "not one of the functions" in refused.text
        ran = await post(client, "/cron/digest/run")
        assert "pushed job" in ran.text
        (job,) = (await app.list_jobs(func="myapp.tasks.digest")).jobs
        assert job.kwargs == {"n": 1}
        gone = await post(client, "/cron/digest/remove")
        assert "schedule digest removed" in gone.text and "No schedule" in gone.text


async def test_charts_page_when_the_metrics_plugin_is_installed(
    app: Chancy, signed_in: httpx.AsyncClient
) -> None:
    page = await signed_in.get("/charts")
    if not app.plugins.has_plugin("metrics"):
        assert page.status_code == 404 and 'href="/charts"' not in (await signed_in.get("/")).text
        return
    assert page.status_code == 200 and "Attempts per minute" in page.text


async def test_metrics_endpoint_when_the_metrics_plugin_is_installed(
    app: Chancy, make_dashboard: MakeDashboard
) -> None:
    def scraper(request: Any) -> str | None:
        return "prometheus" if request.headers.get("authorization") == "Bearer s3cret" else None

    dashboard = make_dashboard(auth=scraper)
    async with client_for(dashboard) as client:
        assert (await client.get("/metrics")).status_code == 303  # never without credentials
        answer = await client.get("/metrics", headers={"authorization": "Bearer s3cret"})
        if not app.plugins.has_plugin("metrics"):
            assert answer.status_code == 404
            return
        assert answer.status_code == 200 and "chancy_" in answer.text
    async with client_for(make_dashboard(auth=scraper, metrics_endpoint=False)) as client:
        off = await client.get("/metrics", headers={"authorization": "Bearer s3cret"})
        assert off.status_code == 404
